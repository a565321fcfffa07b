"""How a pool's accelerator becomes a Ray actor's resource request (pure, no Ray cluster)."""

from __future__ import annotations

import pytest

from pdserve.actuators.ray import actor_options, ray_accelerator_type
from pdserve.profile import PoolSpec, RayActuatorSpec, Role

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [
        ("cpu", None),
        ("CPU", None),
        ("nvidia-a100-80gb", "A100"),  # Ray names an A100-SXM4-80GB node's type "A100"
        ("nvidia-l4", "L4"),
        ("nvidia-h100-80gb", "H100"),
        ("nvidia-l40s", "L40S"),
        ("TPU-V4", "TPU-V4"),  # already Ray's own name: passed through
    ],
)
def test_ray_accelerator_type(accelerator: str, expected: str | None) -> None:
    assert ray_accelerator_type(accelerator) == expected


def test_gpu_pool_asks_for_its_accelerator_and_tp_gpus() -> None:
    pool = PoolSpec(role=Role.prefill, accelerator="nvidia-a100-80gb", tensor_parallel_size=2)
    options = actor_options(pool, RayActuatorSpec(num_cpus_per_replica=4))
    assert options == {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "A100"}


def test_cpu_pool_asks_for_cpus_only() -> None:
    pool = PoolSpec(role=Role.decode, accelerator="cpu")
    assert actor_options(pool, RayActuatorSpec(num_cpus_per_replica=0.5)) == {"num_cpus": 0.5}
