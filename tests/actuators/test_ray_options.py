"""How a pool's accelerator becomes a Ray actor's resource request (pure, no Ray cluster)."""

from __future__ import annotations

import pytest

from pdserve import accelerators
from pdserve.actuators.ray import actor_options, ray_accelerator_type
from pdserve.profile import PoolSpec, RayActuatorSpec, Role

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [
        ("cpu", None),
        ("nvidia-a100-80gb", "A100"),  # Ray names an A100-SXM4-80GB node's type "A100"
        ("nvidia-l4", "L4"),
        ("nvidia-h100-80gb", "H100"),
    ],
)
def test_ray_accelerator_type(accelerator: str, expected: str | None) -> None:
    assert ray_accelerator_type(accelerator) == expected


def test_ray_type_is_the_registrys() -> None:
    for name, accelerator in accelerators.ACCELERATORS.items():
        assert ray_accelerator_type(name) == accelerator.ray_type
    with pytest.raises(ValueError, match="unknown accelerator 'tpu-v4'; use one of cpu"):
        ray_accelerator_type("tpu-v4")


def test_gpu_pool_asks_for_its_accelerator_and_tp_gpus() -> None:
    pool = PoolSpec(role=Role.prefill, accelerator="nvidia-a100-80gb", tensor_parallel_size=2)
    options = actor_options(pool, RayActuatorSpec(num_cpus_per_replica=4))
    assert options == {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "A100"}


def test_cpu_pool_asks_for_cpus_only() -> None:
    pool = PoolSpec(role=Role.decode, accelerator="cpu")
    assert actor_options(pool, RayActuatorSpec(num_cpus_per_replica=0.5)) == {"num_cpus": 0.5}


def test_resource_mode_asks_for_the_type_as_a_custom_resource_per_rank() -> None:
    """Nodes that declare `--resources '{"A100": 8}'` (no GPUs asked for)."""
    pool = PoolSpec(role=Role.prefill, accelerator="nvidia-a100-80gb", tensor_parallel_size=2)
    options = actor_options(pool, RayActuatorSpec(accelerator_as="resource"))
    assert options == {"num_cpus": 1, "resources": {"A100": 2}}
    cpu = PoolSpec(role=Role.decode, accelerator="cpu")
    assert actor_options(cpu, RayActuatorSpec(accelerator_as="resource")) == {"num_cpus": 1}
