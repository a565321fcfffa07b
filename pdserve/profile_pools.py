"""A profile's pools: each pool's role, replica limits, scaling targets, admission and the
simulated worker's faults, with `Strict`, the base of every profile model.

Part of the profile layer (pdserve.profile re-exports every name here): it imports nothing of
pdserve but the accelerator registry.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from pdserve import accelerators

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Base of every profile model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class Role(str, Enum):
    """What a pool's workers do: prefill for another pool, decode (and local prefill), or both."""

    prefill = "prefill"
    decode = "decode"
    both = "both"


class Replicas(Strict):
    min: int = Field(1, ge=0, le=10_000, description="Fewest replicas (0 allows scale to zero).")
    max: int = Field(1, ge=1, le=10_000, description="Most replicas.")
    initial: int | None = Field(None, ge=0, description="Replicas at start; `min` when unset.")

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max}): set min <= max")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(
                f"initial ({self.initial}) outside [min, max] = [{self.min}, {self.max}]"
            )
        return self

    @property
    def start(self) -> int:
        return self.min if self.initial is None else self.initial


class ScalingSpec(Strict):
    target_concurrency: float = Field(
        8, gt=0, description="Decode: requests (queued + running) one replica should carry."
    )
    target_backlog_s: float = Field(
        2.0, gt=0, description="Prefill: seconds of queued prompt tokens one replica may hold."
    )
    target_itl_s: float = Field(
        0.1,
        gt=0,
        description="Decode: inter-token latency a running stream should see; a local prefill "
        "longer than this stalls every stream on the replica, which the route rule weighs.",
    )
    prefill_tokens_per_s: float = Field(
        10_000, gt=0, description="Prefill throughput of one replica before it is measured."
    )
    kv_high_watermark: float = Field(
        0.9, gt=0, le=1, description="KV-cache usage above this adds a replica's worth of pressure."
    )
    stable_window_s: PositiveSeconds = Field(30, description="Window of the stable average.")
    panic_window_s: PositiveSeconds = Field(3, description="Window of the panic average.")
    panic_threshold: float = Field(
        2.0, gt=1, description="Panic when panic-window demand >= this x current capacity."
    )
    scale_up_delay_s: NonNegativeSeconds = Field(0, description="Demand must hold this long up.")
    scale_down_delay_s: NonNegativeSeconds = Field(30, description="...and this long down.")
    max_scale_up_rate: float = Field(
        2.0, ge=1, description="At most this x current replicas (at least +1) per decision."
    )
    max_scale_down_step: int = Field(1, ge=1, description="At most this many fewer per decision.")
    tolerance: float = Field(
        0.1, ge=0, lt=1, description="Hysteresis: ignore demand within this fraction of capacity."
    )
    scale_to_zero_grace_s: NonNegativeSeconds = Field(
        60, description="Idle this long at min 0 before the last replica goes."
    )
    drain_timeout_s: PositiveSeconds = Field(60, description="In-flight work allowed to finish.")
    interval_s: PositiveSeconds = Field(1.0, description="How often the autoscaler decides.")
    headroom: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Spare replicas kept above demand while there is demand (Knative's "
        "target-burst-capacity): a burst shorter than a cold start meets ready capacity.",
    )


class AdmissionSpec(Strict):
    max_inflight_per_replica: int | None = Field(
        None,
        ge=1,
        description="Most requests one replica takes in flight; the rest wait in the gateway's "
        "priority queue. Unset: the tightest of the engine's max_num_seqs, the replica's KV "
        "headroom as scraped and (while the pool can still grow) its scaling target.",
    )
    target_binds: bool = Field(
        True,
        description="While a replica of the pool is starting or can be started, cap each "
        "replica at the pool's per-replica target (scaling.target_concurrency), so a burst "
        "waits at the gateway for the new replicas instead of inside the busy ones.",
    )


def _known_accelerator(name: str) -> str:
    accelerators.get(name)  # a ValueError naming the known ones
    return name


ACCELERATOR_NAMES = accelerators.known()
AcceleratorName = Annotated[
    str,
    AfterValidator(_known_accelerator),
    WithJsonSchema({"type": "string", "enum": list(accelerators.ACCELERATORS)}),
]
"""A name of the accelerator registry (pdserve.accelerators)."""


class SimFaults(Strict):
    """Faults the simulated worker injects (unset: none). A worker's `--fault-*` flag or its
    `PDSERVE_SIM_FAULT_<NAME>` variable beats the profile's value."""

    die_after_tokens: float | None = Field(None, ge=0, description="exit after generating N tokens")
    prefill_fail: float | None = Field(
        None, ge=0, le=1, description="fail this fraction of prefills (bare: all)"
    )
    prefill_slow_s: float | None = Field(
        None, ge=0, description="add S seconds to every prefill step"
    )
    cold_start_s: float | None = Field(
        None, ge=0, description="wait S seconds before opening the port"
    )
    hang: float | None = Field(None, ge=0, description="accept connections but never answer")
    refuse: float | None = Field(
        None, ge=0, description="never open the port (connections refused)"
    )
    skip_kv_pull: float | None = Field(
        None,
        ge=0,
        description="decode: ignore kv_transfer_params and recompute every prompt (as a decode "
        "worker without the KV connector does)",
    )
    error_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="answer this share of completion requests with a 500 engine error before "
        "any token (chosen by the prompt's hash: the same prompt always fails; bare: all)",
    )


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
COMPOSED_ENV = {
    "VLLM_NIXL_SIDE_CHANNEL_HOST": "the actuator sets it to the worker's address",
    "VLLM_NIXL_SIDE_CHANNEL_PORT": "the actuator picks it (the chart: vllm.nixlSideChannelPort)",
    "UCX_TLS": "set kv_transfer.ucx_tls instead",
}
"""Worker variables pdserve composes itself, so a profile's `env` may not set them."""
COMPOSED_FLAGS = {
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--kv-cache-memory-bytes": "kv_cache_gib",
    "--kv-transfer-config": "kv_transfer",
    "--tensor-parallel-size": "the pool's tensor_parallel_size",
    "--port": "the actuator (actuator.base_port; the chart: vllm.port)",
    "--host": "the actuator",
    "--model": "model.source",
    "--served-model-name": "model.name",
    "--max-model-len": "model.max_model_len",
    "--dtype": "model.dtype",
    "--enable-lora": "model.adapters",
    "--lora-modules": "model.adapters (load: start)",
    "--max-loras": "model.max_loras",
    "--max-lora-rank": "model.adapters' rank",
}
"""vLLM flags pdserve composes from a typed key: `extra_args` naming one is an error that names
the key to set instead (a second --max-num-seqs would silently win over the first)."""


def check_extra_args(args: list[str]) -> list[str]:
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in COMPOSED_FLAGS:
            raise ValueError(f"{flag} is composed by pdserve: set {COMPOSED_FLAGS[flag]} instead")
    return args


def check_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if name in COMPOSED_ENV:
            raise ValueError(f"{name} is composed by pdserve: {COMPOSED_ENV[name]}")
    return env


ExtraArgs = Annotated[list[str], AfterValidator(check_extra_args)]
EngineEnv = Annotated[
    dict[Annotated[str, StringConstraints(pattern=ENV_NAME)], str], AfterValidator(check_env)
]


class PoolEngine(Strict):
    """One pool's own engine settings: each key set replaces the profile's `engine` value for
    this pool's workers (unset: the profile's); `extra_args` follow the profile's and `env` is
    laid over the profile's. Heterogeneous pools are tuned apart here: a prefill pool on big
    GPUs wants a large batched-token budget, a decode pool on small ones its memory and batch."""

    max_num_seqs: int | None = Field(None, ge=1, le=4096, description="Most sequences batched.")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Tokens per engine step."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of GPU memory vLLM may use (cuda only)."
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, le=4096, description="KV cache size per replica, GiB (cpu)."
    )
    enforce_eager: bool | None = Field(None, description="Skip CUDA graphs / torch.compile.")
    extra_args: ExtraArgs = Field(
        default_factory=list, description="vLLM flags for this pool, after the profile's."
    )
    env: EngineEnv = Field(
        default_factory=dict, description="Environment of this pool's workers, over the profile's."
    )

    def overrides(self) -> dict[str, object]:
        """The scalar keys this pool sets (its lists merge separately)."""
        return self.model_dump(exclude_none=True, exclude={"extra_args", "env"})


class PoolSpec(Strict):
    role: Role = Field(description="prefill | decode | both")
    model: str | None = Field(
        None,
        description="The served model (a `name` of the profile's `model` or `models`) this "
        "pool's workers load and serve; unset: the profile's `model`.",
    )
    accelerator: AcceleratorName = Field(
        "cpu", description="Accelerator type, a name of pdserve.accelerators: " + ACCELERATOR_NAMES
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per replica.")
    replicas: Replicas = Field(default_factory=Replicas)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    admission: AdmissionSpec = Field(
        default_factory=AdmissionSpec, description="How many requests a replica takes at once."
    )
    cores: list[int] | None = Field(
        None,
        description="Local CPU workers: the cores this pool's replicas are bound to, one core "
        "per replica, round robin.",
    )
    sim_faults: SimFaults = Field(
        default_factory=SimFaults, description="Simulated worker only: faults to inject."
    )
    engine: PoolEngine = Field(
        default_factory=PoolEngine,
        description="This pool's own engine settings over the profile's `engine`.",
    )
