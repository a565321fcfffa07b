"""The gateway's Prometheus metrics, in a registry of their own (one per app, no globals)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pdserve.gateway.worker_metrics import WorkerCounterTotals
from pdserve.policies.types import ScaleDecision
from pdserve.pools.replica import ReplicaState
from pdserve.pools.views import PoolView

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STARTUP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


ROUTE_LABELS = frozenset(("disaggregated", "local", "none"))
FALLBACK_REASONS = ("unreachable", "bad_status", "bad_response", "no_kv_params")
NO_MODEL = "none"  # the model label of a request refused before it named a served model


class GatewayMetrics:
    """Every label value is from a bounded set: routes, route causes and fallback reasons are
    enums, `model` is a served model's name (the profiles'), `status` an HTTP status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._declare_pool_metrics(self.registry)
        self._declare_request_metrics(self.registry)
        self._declare_token_metrics(self.registry)
        # the request path's labelled children, kept: `labels()` takes a lock and builds its
        # key on every call, several times per request
        self._children: dict[tuple[object, ...], Counter | Histogram] = {}

    def _declare_pool_metrics(self, r: CollectorRegistry) -> None:
        """The pool metrics that accumulate; the gauges come from `PoolCollector`."""
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
        self.kv_not_moved = Counter(
            "pdserve_kv_not_moved",
            "Disaggregated requests found served without their pulled KV, by pool and reason",
            ["pool", "reason"],
            registry=r,
        )

    def _declare_request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "pdserve_requests",
            "Completion requests by route, status and model",
            ["route", "status", "model"],
            registry=r,
        )
        self.route_decisions = Counter(
            "pdserve_route_decisions",
            "Requests by the route they took and why (reason: a bounded set)",
            ["route", "reason", "model"],
            registry=r,
        )
        self.fallbacks = Counter(
            "pdserve_prefill_fallbacks",
            "Prefill hops that failed, the request prefilled locally instead, by reason",
            ["reason", "model"],
            registry=r,
        )
        self.prefill_hop = self._latency(
            "pdserve_prefill_hop_seconds", "Prefill request to KV params", ["model"], r
        )
        self.ttft = self._latency("pdserve_ttft_seconds", "Time to first token", _RM, r)
        self.e2e = self._latency(
            "pdserve_e2e_request_latency_seconds", "Arrival to the last byte", _RM, r
        )
        self.queue_wait = self._latency(
            "pdserve_queue_wait_seconds", "Arrival until a route and replica are chosen", _RM, r
        )

    def _declare_token_metrics(self, r: CollectorRegistry) -> None:
        self.itl = self._latency(
            "pdserve_itl_seconds",
            "Inter-token latency, per token (a chunk of n tokens counts its gap / n, n times)",
            _RM,
            r,
        )
        self.prompt_tokens = Counter(
            "pdserve_prompt_tokens", "Prompt tokens of completed requests", _RM, registry=r
        )
        self.generation_tokens = Counter(
            "pdserve_generation_tokens", "Tokens generated for clients", _RM, registry=r
        )

    @staticmethod
    def _latency(name: str, doc: str, labels: list[str], r: CollectorRegistry) -> Histogram:
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=r)

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept for the next request."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_request(self, route: str, status: int | str, model: str = NO_MODEL) -> None:
        """`pdserve_requests_total{route,status,model}` += 1."""
        route = route if route in ROUTE_LABELS else "none"
        self.child(self.requests, route, status_label(status), model).inc()

    def observe_ttft(self, route: str, seconds: float, model: str = NO_MODEL) -> None:
        self.child(self.ttft, route, model).observe(seconds)

    def itl_of(self, route: str, model: str = NO_MODEL) -> Histogram:
        """The inter-token latency histogram of one route and model."""
        histogram: Histogram = self.child(self.itl, route, model)
        return histogram

    def observe_startup(self, pool: str, seconds: float) -> None:
        self.startup.labels(pool=pool).observe(seconds)

    def observe_decision(self, decision: ScaleDecision) -> None:
        self.decisions.labels(pool=decision.pool, direction=decision.direction).inc()

    def export_pools(self, source: PoolSource, clock: Callable[[], float] = time.monotonic) -> None:
        """From now on every scrape carries the gauges of the pools `source` has at that time,
        and their workers' KV transfer and prefix cache counters."""
        self.registry.register(PoolCollector(source, clock))

    def render(self) -> bytes:
        """Prometheus text of every metric, the pool gauges read now."""
        return generate_latest(self.registry)


_RM = ["route", "model"]


def status_label(status: int | str) -> str:
    """An HTTP status as a label value; anything else is `other` (labels stay bounded)."""
    text = str(status)
    return text if len(text) == 3 and text.isdigit() and text[0] in "12345" else "other"


class PoolSource(Protocol):
    """What the pool gauges are read from: the pool manager's read-only views of its pools."""

    def pool_views(self, now: float) -> list[PoolView]: ...


POOL_GAUGES = (
    ("pdserve_pool_queue_depth", "Requests held for a pool", ["pool"]),
    ("pdserve_pool_concurrency", "Held + in-flight requests of a pool", ["pool"]),
    ("pdserve_pool_replicas", "Replicas by state", ["pool", "state"]),
    (
        "pdserve_pool_queued_prompt_tokens",
        "Prompt tokens held for or waiting on a pool (the prefill pool's scaling signal)",
        ["pool"],
    ),
    ("pdserve_pool_desired_replicas", "Replicas the pool should have", ["pool"]),
)


class PoolCollector(Collector):
    """The pool gauges of the pools that exist when /metrics is read: a pool that a profile
    switch dropped leaves the next scrape, instead of being exported at its last values."""

    def __init__(self, source: PoolSource, clock: Callable[[], float]) -> None:
        self._source = source
        self._clock = clock
        self._workers = WorkerCounterTotals()

    def describe(self) -> list[Metric]:
        return list(_gauge_families())

    def collect(self) -> Iterator[Metric]:
        queue, concurrency, replicas, tokens, desired = _gauge_families()
        views = self._source.pool_views(self._clock())
        for pool in views:
            name, snap = pool.name, pool.snapshot
            queue.add_metric([name], snap.queued_requests)
            concurrency.add_metric([name], snap.concurrency)
            tokens.add_metric([name], snap.queued_prompt_tokens)
            desired.add_metric([name], pool.desired)
            for state in ReplicaState:
                replicas.add_metric([name, state.value], pool.replicas[state.value])
        yield from (queue, concurrency, replicas, tokens, desired)
        yield from self._workers.collect(views)


def _gauge_families() -> list[GaugeMetricFamily]:
    return [GaugeMetricFamily(name, doc, labels=labels) for name, doc, labels in POOL_GAUGES]
