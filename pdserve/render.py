"""Helm values that reproduce a serving profile on Kubernetes, one block per pool.

`pdserve render --profile NAME` prints them; `helm install ... -f` takes them. The output is
checked against the chart's own values models before it is written, so a rendered file always
passes the chart's schema.
"""

from __future__ import annotations

from typing import Any

import yaml

from pdserve.helm_values import AutoscalingMode, HelmValues
from pdserve.profile import EngineKind, PoolSpec, Profile, ProfileError

SEEDED_MODELS = ("tiny", "small")
PROFILE_KEYS = {"name", "description", "model", "engine", "routing", "kv_transfer", "gateway"}

_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _gpu(*products: str) -> dict[str, Any]:
    return {
        "nodeLabel": "nvidia.com/gpu.product",
        "nodeLabelValues": list(products),
        "gpuResource": "nvidia.com/gpu",
        "tolerations": _GPU_TOLERATIONS,
    }


ACCELERATORS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "nvidia-a100-80gb": _gpu("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    "nvidia-l4": _gpu("NVIDIA-L4"),
    "nvidia-h100-80gb": _gpu("NVIDIA-H100-80GB-HBM3"),
}
"""Where each accelerator type of a profile lives: NVIDIA GPU feature discovery's product label
(the chart's values.yaml carries the same table)."""

# Per replica and tensor-parallel rank: (CPU request, memory request GiB, memory limit GiB).
# vLLM's CPU server takes ~3.4 GB with a 1 GiB KV cache; a GPU replica needs host memory for
# weights staging and NIXL/UCX buffers.
_HOST_RESOURCES: dict[str, tuple[str, int, int]] = {
    "cpu": ("2", 6, 8),
    "nvidia-a100-80gb": ("10", 96, 128),
    "nvidia-l4": ("6", 24, 30),
    "nvidia-h100-80gb": ("12", 128, 160),
    "sim": ("500m", 1, 1),
}


def render_values(profile: Profile) -> dict[str, Any]:
    """The chart values for `profile`: its serving keys, one block per pool, the accelerators
    its pools use, and the gateway's own (kubernetes actuator) autoscaling."""
    sim = profile.engine.kind is EngineKind.sim
    pools = {name: _pool_values(name, pool, sim) for name, pool in profile.pools.items()}
    used = sorted({pool.accelerator for pool in profile.pools.values()})
    profile_block = profile.model_dump(mode="json", include=PROFILE_KEYS)
    profile_block["gateway"]["host"] = "0.0.0.0"  # a pod serves on its own IP
    values = HelmValues.model_validate(
        {
            "profile": profile_block,
            "pools": pools,
            "accelerators": {name: ACCELERATORS[name] for name in used},
            "autoscaling": {"mode": AutoscalingMode.pdserve},
            # Seeded checkpoints are written into the cache by an init container; a model
            # path is a pre-filled cache that pods only read.
            "modelCache": {"readOnly": profile.model.source not in SEEDED_MODELS},
        }
    )
    return values.model_dump(mode="json")


def _pool_values(name: str, pool: PoolSpec, sim: bool) -> dict[str, Any]:
    if pool.accelerator not in ACCELERATORS:
        known = ", ".join(ACCELERATORS)
        raise ProfileError(
            f"pools.{name}.accelerator: {pool.accelerator!r} has no Kubernetes placement; "
            f"use one of {known}, or add it under `accelerators` in the values"
        )
    return {
        "role": pool.role.value,
        "accelerator": pool.accelerator,
        "tensorParallelSize": pool.tensor_parallel_size,
        "replicas": pool.replicas.model_dump(mode="json"),
        "scaling": pool.scaling.model_dump(mode="json"),
        "resources": _resources("sim" if sim else pool.accelerator, pool.tensor_parallel_size),
    }


def _resources(kind: str, ranks: int) -> dict[str, Any]:
    """Host CPU and memory (GPUs are added by the chart from the accelerator)."""
    cpu, request_gib, limit_gib = _HOST_RESOURCES[kind]
    if ranks > 1 and cpu.isdigit():
        cpu = str(int(cpu) * ranks)
    return {
        "requests": {"cpu": cpu, "memory": f"{request_gib * ranks}Gi"},
        "limits": {"memory": f"{limit_gib * ranks}Gi"},
    }


def render_values_yaml(profile: Profile) -> str:
    """`render_values` as a commented YAML file for `helm install -f`."""
    header = (
        f"# Helm values for the pdserve chart, rendered from the serving profile "
        f"{profile.name!r}\n"
        f"# by `pdserve render --profile {profile.name}`. Install with:\n"
        f"#   helm install pdserve manifests/helm/pdserve --namespace pdserve "
        f"--create-namespace -f <this file>\n"
    )
    body = yaml.safe_dump(render_values(profile), sort_keys=False, width=100)
    return header + body
