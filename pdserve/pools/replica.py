"""One replica as the gateway knows it: raw observations, and the one function deriving its state.

Observations come from three places: the actuator (the process exists), the scraper (the last
/health probe and /metrics values) and the gateway itself (draining flag, in-flight requests,
failures seen while proxying). `replica_state` is the only place they are combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pdserve.actuators.base import ReplicaHandle
from pdserve.policies.types import ReplicaLoad

SCRAPED_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
}


class ReplicaState(str, Enum):
    starting = "starting"
    ready = "ready"
    draining = "draining"
    failed = "failed"


@dataclass
class Replica:
    """Mutable observations of one replica, updated by the scraper and the gateway."""

    handle: ReplicaHandle
    alive: bool = True
    healthy: bool = False  # last /health probe (or request) succeeded
    ever_healthy: bool = False
    draining: bool = False
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    inflight: int = 0
    inflight_prompt_tokens: int = 0
    local_prefill_tokens: int = 0  # prompts sent here to be prefilled, no first token yet
    prefill_done_at: float = 0.0  # when its latest prefill reached a first token
    busy_since: float = 0.0  # when its in-flight count last rose from zero
    failures: int = 0  # consecutive failed probes or requests
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def url(self) -> str:
        return self.handle.url

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(
            id=self.id,
            waiting=self.waiting,
            running=self.running,
            kv_usage=self.kv_usage,
            inflight=self.inflight,
        )

    def observe_health(self, ok: bool) -> None:
        self.healthy = ok
        self.failures = 0 if ok else self.failures + 1
        self.ever_healthy = self.ever_healthy or ok

    def observe_metrics(self, values: dict[str, float]) -> None:
        self.waiting = int(values.get("waiting", self.waiting))
        self.running = int(values.get("running", self.running))
        self.kv_usage = float(values.get("kv_usage", self.kv_usage))

    def eject(self) -> None:
        """A request to it failed: no new requests until a probe says it is healthy again."""
        self.healthy = False
        self.failures += 1


def replica_state(replica: Replica) -> ReplicaState:
    """The one derivation of a replica's state from its observations."""
    if not replica.alive:
        return ReplicaState.failed
    if replica.draining:
        return ReplicaState.draining
    if replica.healthy:
        return ReplicaState.ready
    return ReplicaState.failed if replica.ever_healthy else ReplicaState.starting


def parse_worker_metrics(text: str) -> dict[str, float]:
    """Sum the scraped vLLM gauges over their label sets (one per engine) from Prometheus text.

    `kv_usage` is the maximum rather than the sum: it is a fraction per engine.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = SCRAPED_GAUGES.get(name)
        if key is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        if key == "kv_usage":
            values[key] = max(values.get(key, 0.0), value)
        else:
            values[key] = values.get(key, 0.0) + value
    return values
