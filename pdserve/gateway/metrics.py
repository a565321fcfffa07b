"""The gateway's Prometheus metrics, in a registry of their own (one per app, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pdserve.policies.types import ScaleDecision
from pdserve.pools.manager import PoolManager
from pdserve.pools.replica import ReplicaState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STARTUP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._declare_pool_metrics(self.registry)
        self._declare_request_metrics(self.registry)
        # the request path's labelled children, kept: `labels()` takes a lock and builds its
        # key on every call, several times per request
        self._requests: dict[tuple[str, str], Counter] = {}
        self._ttft: dict[str, Histogram] = {}
        self._itl: dict[str, Histogram] = {}

    def _declare_pool_metrics(self, r: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "pdserve_pool_queue_depth", "Requests held for a pool", ["pool"], registry=r
        )
        self.concurrency = Gauge(
            "pdserve_pool_concurrency", "Held + in-flight requests of a pool", ["pool"], registry=r
        )
        self.replicas = Gauge(
            "pdserve_pool_replicas", "Replicas by state", ["pool", "state"], registry=r
        )
        self.queued_tokens = Gauge(
            "pdserve_pool_queued_prompt_tokens",
            "Prompt tokens held for or waiting on a pool (the prefill pool's scaling signal)",
            ["pool"],
            registry=r,
        )
        self.desired = Gauge(
            "pdserve_pool_desired_replicas", "Replicas the pool should have", ["pool"], registry=r
        )
        self.decisions = Counter(
            "pdserve_scale_decisions", "Scale decisions", ["pool", "direction"], registry=r
        )
        self.startup = Histogram(
            "pdserve_replica_startup_seconds",
            "Launch to first healthy",
            ["pool"],
            buckets=STARTUP_BUCKETS,
            registry=r,
        )

    def _declare_request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "pdserve_requests",
            "Completion requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "pdserve_ttft_seconds",
            "Time to first token",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pdserve_itl_seconds",
            "Inter-token latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prefill_hop = Histogram(
            "pdserve_prefill_hop_seconds",
            "Prefill request to KV params",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def count_request(self, route: str, status: int | str) -> None:
        """`pdserve_requests_total{route,status}` += 1."""
        key = (route, str(status))
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    def observe_ttft(self, route: str, seconds: float) -> None:
        _route_child(self._ttft, self.ttft, route).observe(seconds)

    def itl_of(self, route: str) -> Histogram:
        """The inter-token latency histogram of one route."""
        return _route_child(self._itl, self.itl, route)

    def observe_startup(self, pool: str, seconds: float) -> None:
        self.startup.labels(pool=pool).observe(seconds)

    def observe_decision(self, decision: ScaleDecision) -> None:
        self.decisions.labels(pool=decision.pool, direction=decision.direction).inc()

    def render(self, manager: PoolManager, now: float) -> bytes:
        """Prometheus text, with the pool gauges refreshed from the manager first."""
        for name, pool in manager.pools.items():
            snap = manager.snapshot(name, now)
            self.queue_depth.labels(pool=name).set(snap.queued_requests)
            self.concurrency.labels(pool=name).set(snap.concurrency)
            self.queued_tokens.labels(pool=name).set(snap.queued_prompt_tokens)
            self.desired.labels(pool=name).set(pool.desired)
            for state in ReplicaState:
                self.replicas.labels(pool=name, state=state.value).set(pool.count(state))
        return generate_latest(self.registry)


def _route_child(cache: dict[str, Histogram], metric: Histogram, route: str) -> Histogram:
    child = cache.get(route)
    if child is None:
        child = cache[route] = metric.labels(route)
    return child
