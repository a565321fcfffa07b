"""One replica as the gateway knows it: raw observations, and the one function deriving its state.

Observations come from three places: the actuator (the process exists), the scraper (the last
/health probe and /metrics values) and the gateway itself (draining flag, in-flight requests,
failures seen while proxying). `replica_state` is the only place they are combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from prometheus_client.parser import text_string_to_metric_families

from pdserve.actuators.base import ReplicaHandle
from pdserve.policies.types import ReplicaLoad

SCRAPED_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
}
SCRAPED_COUNTERS = {
    # prompt tokens whose KV the worker did not compute: pulled from a prefill peer, or a
    # prefix it held (the proof that a disaggregated request's KV arrived, policies.kv_proof)
    ("vllm:prompt_tokens_by_source_total", "external_kv_transfer"): "kv_received_tokens",
    ("vllm:prompt_tokens_by_source_total", "local_cache_hit"): "kv_received_tokens",
    ("vllm:nixl_num_failed_transfers_total", None): "kv_failed_pulls",
}
SCRAPED_NAMES = tuple(SCRAPED_GAUGES) + tuple({name for name, _ in SCRAPED_COUNTERS})


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
    unconfirmed: bool = False  # ejected by a failed request, not yet probed since
    kv_received_tokens: float | None = None  # counter: prompt tokens pulled or cached (scraped)
    kv_failed_pulls: float = 0.0  # counter: failed NIXL transfers (scraped)
    scrapes: int = 0  # /metrics bodies observed (orders the gateway's records and the counters)
    kv_fault: str | None = None  # why its KV is not moving: it serves nothing until kv_fault_until
    kv_fault_until: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    metrics_text: str | None = None  # the worker's last /metrics body

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
        self.unconfirmed = False
        self.failures = 0 if ok else self.failures + 1
        self.ever_healthy = self.ever_healthy or ok

    def observe_metrics(self, values: dict[str, float]) -> None:
        self.waiting = int(values.get("waiting", self.waiting))
        self.running = int(values.get("running", self.running))
        self.kv_usage = float(values.get("kv_usage", self.kv_usage))
        self.kv_received_tokens = values.get("kv_received_tokens")
        self.kv_failed_pulls = float(values.get("kv_failed_pulls", self.kv_failed_pulls))
        self.scrapes += 1

    def eject(self) -> None:
        """A request to it failed: no new requests until a probe says it is healthy again.
        Until that probe the failure is unconfirmed: the worker may be restarting (its actuator
        replaces a dead one) or the failure may have been the request's alone."""
        self.healthy = False
        self.unconfirmed = True
        self.failures += 1


def replica_state(replica: Replica) -> ReplicaState:
    """The one derivation of a replica's state from its observations."""
    if not replica.alive:
        return ReplicaState.failed
    if replica.draining:
        return ReplicaState.draining
    if replica.kv_fault is not None:
        return ReplicaState.failed  # answers, but its KV does not reach the decode workers
    if replica.healthy:
        return ReplicaState.ready
    return ReplicaState.failed if replica.ever_healthy else ReplicaState.starting


def parse_worker_metrics(text: str) -> dict[str, float]:
    """Sum the scraped vLLM gauges over their label sets (one per engine) from Prometheus text.

    `kv_usage` is the maximum rather than the sum: it is a fraction per engine. A body that does
    not parse gives no values (the replica keeps its last ones).

    Only the lines that start with a scraped gauge's name go to `prometheus_client`'s parser:
    on a real vLLM 0.32 CPU server's /metrics (60 KB, 726 lines, 452 of them `vllm:`; kept in
    tests/pools/data/) the parser takes 9 ms over the whole body, 8 ms over its `vllm:` lines
    (the histograms' buckets are most of them) and 0.2 ms over the gauges' lines, per replica
    and scrape, on the gateway's event loop (timeit, best of 5 runs of 200).
    """
    lines = "\n".join(line for line in text.splitlines() if line.startswith(SCRAPED_NAMES))
    values: dict[str, float] = {}
    try:
        samples = [s for f in text_string_to_metric_families(lines) for s in f.samples]
    except ValueError:
        return values
    for sample in samples:
        key = SCRAPED_GAUGES.get(sample.name) or SCRAPED_COUNTERS.get(
            (sample.name, sample.labels.get("source"))
        )
        if key is None:
            continue  # a longer name with the same prefix, e.g. num_requests_waiting_by_reason
        if key == "kv_usage":
            values[key] = max(values.get(key, 0.0), sample.value)
        else:
            values[key] = values.get(key, 0.0) + sample.value
    return values
