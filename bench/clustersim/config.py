"""What a simulation is given and what it keeps: its configuration, each pool's state as the
gateway and the autoscaler see it, and the result handed to `results.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.clustersim.replicas import Ledger, ReplicaLife
from bench.workload import Requests
from pdserve.policies.picking import PickerState
from pdserve.pools.pool import ServiceTime
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Profile, Role
from pdserve.workers.sim import roofline as hardware
from pdserve.workers.sim.roofline import ModelCost


@dataclass(frozen=True)
class ColdStart:
    """A new replica's start: a node, the serving image, then the weights from a local cache."""

    provision_s: float = 60.0
    image_s: float = 30.0
    weights_bytes_per_s: float = 2e9  # local NVMe model cache

    def seconds(self, model: ModelCost) -> float:
        return self.provision_s + self.image_s + model.weight_bytes / self.weights_bytes_per_s


@dataclass(frozen=True)
class SimConfig:
    profile: Profile
    model: ModelCost
    cold_start: ColdStart = ColdStart()
    picker_all_up_to: int = 8  # pools this small offer the picker every ready replica,
    picker_sample: int = 2  # larger ones a random sample of this many (power of two choices)
    tail_s: float = 900.0  # simulate at most this long after the last arrival
    seed: int = 0
    # The gateway's admission (pdserve.policies.admission): per-replica capacity with the rest
    # held at the gateway, route and replica bound when a request leaves the queue, diverted
    # prompts counted toward the pool they were meant for. False: the gateway before issue 18,
    # which sent a request at once to a ready replica (it waited inside the engine), kept the
    # route it got on arrival and counted a diverted prompt nowhere.
    late_binding: bool = True


@dataclass
class PoolState:
    """One pool of the simulated cluster, as the gateway and the autoscaler see it."""

    name: str
    spec: PoolSpec
    acc: hardware.Accelerator
    ready: list = field(default_factory=list)  # replicas taking work
    starting: list = field(default_factory=list)
    draining: list = field(default_factory=list)
    lives: list[ReplicaLife] = field(default_factory=list)  # every replica ever launched
    held: list = field(default_factory=list)  # heap of (release key, Ticket) at the gateway
    held_tokens: int = 0
    picker: PickerState = field(default_factory=PickerState)
    step_cache: dict = field(default_factory=dict)  # decode step times, shared by replicas
    prefill_rate: float | None = None  # tokens/s of one replica, once computed
    arrivals: int = 0  # requests sent to this pool since the last tick
    busy_mark: float = 0.0  # replicas' busy seconds at the last tick
    service: ServiceTime = field(default_factory=ServiceTime)  # slots freed per second
    startup_s: float | None = None  # launch-to-ready of the latest replica that became ready
    diverted_requests: int = 0  # its prompts prefilled elsewhere (or held for that)
    diverted_tokens: int = 0

    @property
    def role(self) -> Role:
        return self.spec.role

    @property
    def replicas(self) -> list:
        return self.ready + self.starting + self.draining


@dataclass
class TickView:
    """Extra signals for baseline scalers: utilisation and request rate over the last tick."""

    utilization: float
    qps: float


Scaler = Callable[[PoolState, PoolSnapshot, TickView], tuple[int, str]]


@dataclass
class Timeline:
    rows: list[tuple[float, str, int, int, int]] = field(default_factory=list)  # t, pool, r/s/d


@dataclass
class SimResult:
    requests: Requests
    ledger: Ledger
    lives: list[ReplicaLife]
    timeline: Timeline
    horizon_s: float  # replicas still up are billed until here
