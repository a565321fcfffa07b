"""The one place that composes a vLLM server's command line and environment for a role.

`vllm_command(spec)` is pure: a `WorkerSpec` in, argv and the environment additions out.
Running it is the launcher's job. Flag and variable names follow vLLM 0.32
(vllm/engine/arg_utils.py, vllm/envs.py, the NixlConnector in
vllm/distributed/kv_transfer/kv_connector/v1/nixl/); a unit test parses the argv with vLLM's
own server parser so a misspelt flag fails there, not at start-up.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from pdserve.profile import Device, KVTransferSpec, ModelSpec, Profile, Role, RoutingMode
from pdserve.profile_adapters import lora_rank

# vLLM's KV block sizes in tokens (the gateway's prefix hashes count in the same blocks)
CPU_BLOCK_SIZE = 128  # passed as --block-size on CPU
GPU_BLOCK_SIZE = 16  # vLLM's own default on GPUs
GiB = 1 << 30

WorkerRole = Literal["prefill", "decode", "both"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything that decides one vLLM worker's command line."""

    role: WorkerRole
    model: str  # a checkpoint directory (resolve `tiny`/`small` with ensure_model first)
    port: int
    served_model_name: str = "tiny"
    host: str = "127.0.0.1"
    side_channel_port: int | None = None  # NIXL handshake; needed when kv_connector is on
    side_channel_host: str | None = None  # where peers reach the handshake; `host` if unset
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    kv_connector: bool = True  # NixlConnector on (P/D) or off (a plain unified server)
    kv_buffer_device: Literal["cpu", "cuda"] = "cpu"
    kv_load_failure_policy: Literal["recompute", "fail"] = "recompute"
    block_lease_s: float = 30.0
    ucx_tls: str | None = None
    cores: tuple[int, ...] = ()  # CPU: the cores every thread of the worker is bound to
    otlp_traces_endpoint: str | None = None  # vLLM sends its own request spans there
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # the pool's own variables, before pdserve's
    max_loras: int = 0  # LoRA adapters held at once; 0: LoRA off
    max_lora_rank: int = 8
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, source) loaded at start
    python: str = field(default=sys.executable)

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        pool_name: str,
        port: int,
        side_channel_port: int | None = None,
        cores: tuple[int, ...] | list[int] = (),
    ) -> WorkerSpec:
        """The spec of one replica of `pool_name` (with the pool's own engine settings);
        `model` is the profile's source as given."""
        pool = profile.pools[pool_name]
        engine = profile.engine_for(pool_name)
        model = profile.model_for(pool_name)  # the pool's own model, of the profile's several
        disaggregated = profile.routing_of(model.name).mode is RoutingMode.disaggregated
        return cls(
            role=pool.role.value,
            port=port,
            host="127.0.0.1",
            side_channel_port=side_channel_port,
            device=engine.device.value,
            kv_cache_gib=engine.kv_cache_gib,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            max_num_seqs=engine.max_num_seqs,
            max_num_batched_tokens=engine.max_num_batched_tokens,
            enforce_eager=engine.enforce_eager,
            tensor_parallel_size=pool.tensor_parallel_size,
            kv_connector=disaggregated or pool.role is not Role.both,
            cores=tuple(cores),
            otlp_traces_endpoint=profile.gateway.otlp_traces_endpoint,
            extra_args=tuple(engine.extra_args),
            env=tuple(engine.env.items()),
            **_model_keys(model),
            **_kv_keys(profile.kv_transfer),
        )


class _ModelKeys(TypedDict):
    model: str
    served_model_name: str
    dtype: str
    max_model_len: int
    max_loras: int
    max_lora_rank: int
    lora_modules: tuple[tuple[str, str], ...]


def _model_keys(model: ModelSpec) -> _ModelKeys:
    """A worker's keys from the model its pool serves: the checkpoint (the source as given),
    the served name, and LoRA (room for max_loras when it has adapters, those loaded at start)."""
    return _ModelKeys(
        model=model.source,
        served_model_name=model.name,
        dtype=model.dtype,
        max_model_len=model.max_model_len,
        max_loras=model.max_loras if model.adapters else 0,
        max_lora_rank=lora_rank(model.adapters),
        lora_modules=tuple((a.name, a.source) for a in model.adapters if a.load == "start"),
    )


class _KVKeys(TypedDict):
    kv_buffer_device: Literal["cpu", "cuda"]
    kv_load_failure_policy: Literal["recompute", "fail"]
    block_lease_s: float
    ucx_tls: str | None


def _kv_keys(kv: KVTransferSpec) -> _KVKeys:
    """A worker's keys from the profile's kv_transfer (the tcp backend is UCX over TCP)."""
    return _KVKeys(
        kv_buffer_device=kv.buffer_device.value,
        kv_load_failure_policy=kv.kv_load_failure_policy,
        block_lease_s=kv.block_lease_s,
        ucx_tls=kv.ucx_tls or ("tcp" if kv.backend == "tcp" else None),
    )


@dataclass(frozen=True)
class WorkerCommand:
    argv: list[str]
    env: dict[str, str]  # added to the launcher's environment


def vllm_command(spec: WorkerSpec) -> WorkerCommand:
    """The vLLM OpenAI server's argv and environment for `spec`."""
    return WorkerCommand(argv=_argv(spec), env=_env(spec))


def kv_transfer_config(spec: WorkerSpec) -> dict[str, object]:
    """vLLM's --kv-transfer-config for NixlConnector (every role is kv_both: P/D is per request)."""
    return {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_both",
        "kv_buffer_device": spec.kv_buffer_device,
        "kv_load_failure_policy": spec.kv_load_failure_policy,
        # vLLM 0.32 frees a prefill's unpulled blocks after this many whole seconds.
        "kv_connector_extra_config": {"kv_lease_duration": max(1, math.ceil(spec.block_lease_s))},
    }


def _argv(spec: WorkerSpec) -> list[str]:
    argv = [
        spec.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.model,
        "--served-model-name", spec.served_model_name,
        "--host", spec.host,
        "--port", str(spec.port),
        "--dtype", spec.dtype,
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--tensor-parallel-size", str(spec.tensor_parallel_size),
    ]  # fmt: skip
    if spec.device == Device.cpu.value:
        argv += ["--block-size", str(CPU_BLOCK_SIZE)]
        argv += ["--kv-cache-memory-bytes", str(int(spec.kv_cache_gib * GiB))]
    else:
        argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    if spec.kv_connector:
        argv += ["--kv-transfer-config", json.dumps(kv_transfer_config(spec))]
    if spec.otlp_traces_endpoint:
        argv += ["--otlp-traces-endpoint", spec.otlp_traces_endpoint]
    return argv + _lora_argv(spec) + list(spec.extra_args)


def _lora_argv(spec: WorkerSpec) -> list[str]:
    """LoRA flags: adapters loaded at start by `name=path` (sources resolved to directories by
    the worker CLI first), room for `max_loras` at once."""
    if spec.max_loras < 1:
        return []
    argv = ["--enable-lora", "--max-loras", str(spec.max_loras)]
    argv += ["--max-lora-rank", str(spec.max_lora_rank)]
    if spec.lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in spec.lora_modules)]
    return argv


def _env(spec: WorkerSpec) -> dict[str, str]:
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # nothing leaves the machine
    env.update(spec.env)  # the profile's and the pool's (validated not to name those below)
    if spec.kv_connector:
        if spec.side_channel_port is None:
            raise ValueError("a worker with the NIXL connector needs a side_channel_port")
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = spec.side_channel_host or spec.host
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(spec.side_channel_port)
    if spec.ucx_tls:
        env["UCX_TLS"] = spec.ucx_tls
    if spec.max_loras >= 1:  # the gateway loads and unloads adapters on demand
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if spec.device == Device.cpu.value and spec.cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(spec.cores, spec.tensor_parallel_size)
    return env


def omp_threads_bind(cores: tuple[int, ...], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND: the cores split into `ranks` contiguous lists, '|'-separated.

    (0, 1) with 1 rank -> "0,1"; (0, 1, 2, 3) with 2 ranks -> "0,1|2,3".
    """
    if len(cores) < ranks:
        raise ValueError(f"{ranks} tensor-parallel ranks need at least {ranks} cores: {cores}")
    per_rank = len(cores) // ranks
    groups = [cores[i * per_rank : (i + 1) * per_rank] for i in range(ranks)]
    return "|".join(",".join(str(core) for core in group) for group in groups)
