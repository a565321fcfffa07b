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
from typing import Literal

from pdserve.profile import Device, Profile, Role, RoutingMode

CPU_BLOCK_SIZE = 128
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
    extra_args: tuple[str, ...] = ()
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
        """The spec of one replica of `pool_name`; `model` is the profile's source as given."""
        pool = profile.pools[pool_name]
        engine = profile.engine
        kv = profile.kv_transfer
        disaggregated = profile.routing.mode is RoutingMode.disaggregated
        return cls(
            role=pool.role.value,
            model=profile.model.source,
            port=port,
            served_model_name=profile.model.name,
            host="127.0.0.1",
            side_channel_port=side_channel_port,
            device=engine.device.value,
            dtype=profile.model.dtype,
            max_model_len=profile.model.max_model_len,
            kv_cache_gib=engine.kv_cache_gib,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            max_num_seqs=engine.max_num_seqs,
            max_num_batched_tokens=engine.max_num_batched_tokens,
            enforce_eager=engine.enforce_eager,
            tensor_parallel_size=pool.tensor_parallel_size,
            kv_connector=disaggregated or pool.role is not Role.both,
            kv_buffer_device=kv.buffer_device.value,
            kv_load_failure_policy=kv.kv_load_failure_policy,
            block_lease_s=kv.block_lease_s,
            ucx_tls=kv.ucx_tls or ("tcp" if kv.backend == "tcp" else None),
            cores=tuple(cores),
            extra_args=tuple(engine.extra_args),
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
    return argv + list(spec.extra_args)


def _env(spec: WorkerSpec) -> dict[str, str]:
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # nothing leaves the machine
    if spec.kv_connector:
        if spec.side_channel_port is None:
            raise ValueError("a worker with the NIXL connector needs a side_channel_port")
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = spec.host
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(spec.side_channel_port)
    if spec.ucx_tls:
        env["UCX_TLS"] = spec.ucx_tls
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
