"""Autoscaling policies the simulator compares, all behind one call shape:
`scaler(pool, snapshot, view) -> (desired replicas, reason)`.

- `PdserveScaler`: pdserve's own policy, `pdserve.policies.autoscaling.decide` (decode pools on
  concurrency, prefill pools on queued prompt tokens), imported, not copied.
- `HpaScaler`: the Kubernetes Horizontal Pod Autoscaler algorithm on GPU utilisation (the
  fraction of time a replica had any work, as DCGM's GPU utilisation reports it):
  desired = ceil(ready x utilisation / target), a 10% tolerance, scale-up at most
  max(2 x current, current + 4) per 15 s, scale-down to the highest recommendation of the last
  300 s (kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale, "Algorithm details"
  and "Default Behavior").
- `QpsScaler`: the same HPA algorithm on requests per second (a KEDA/Prometheus QPS rule):
  desired = ceil(qps averaged over 60 s / qps_per_replica).
- `StaticScaler`: a fixed replica count per pool (provisioned for the peak).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from bench.clustersim.config import PoolState, TickView
from pdserve.policies.autoscaling import AutoscaleState, decide
from pdserve.pools.snapshot import PoolSnapshot


@dataclass
class PdserveScaler:
    name: str = "pdserve"
    states: dict[str, AutoscaleState] = field(default_factory=dict)

    def __call__(self, pool: PoolState, snapshot: PoolSnapshot, view: TickView) -> tuple[int, str]:
        state = self.states.get(pool.name, AutoscaleState.initial())
        decision, self.states[pool.name] = decide(snapshot, state, pool.spec, pool.role)
        return decision.desired, decision.reason


@dataclass
class _HpaPool:
    recommendations: deque = field(default_factory=deque)  # (now, desired)
    last_up: float = -math.inf
    samples: deque = field(default_factory=deque)  # (now, metric)


@dataclass
class HpaScaler:
    """The HPA algorithm over a per-pool metric taken from `TickView`."""

    name: str = "hpa-gpu-util"
    metric: str = "utilization"  # or "qps"
    targets: dict[str, float] = field(default_factory=dict)  # pool -> target metric per replica
    default_target: float = 0.6  # 60% GPU utilisation
    metric_window_s: float = 0.0  # average the metric over this long (0: latest sample)
    tolerance: float = 0.1
    downscale_window_s: float = 300.0
    upscale_period_s: float = 15.0
    pools: dict[str, _HpaPool] = field(default_factory=dict)

    def __call__(self, pool: PoolState, snapshot: PoolSnapshot, view: TickView) -> tuple[int, str]:
        if pool.name not in self.pools:
            # as if the HPA had been running: the starting count is in the stabilisation window
            self.pools[pool.name] = _HpaPool(deque([(snapshot.now, snapshot.current)]))
        memory = self.pools[pool.name]
        value = self._metric(memory, snapshot.now, getattr(view, self.metric))
        target = self.targets.get(pool.name, self.default_target)
        current, ready = snapshot.current, max(snapshot.ready, 1)
        per_replica = value if self.metric == "utilization" else value / ready
        ratio = per_replica / target
        raw = current if abs(ratio - 1) <= self.tolerance else math.ceil(ready * ratio)
        desired = self._behave(memory, snapshot.now, current, raw)
        replicas = pool.spec.replicas
        desired = max(max(replicas.min, 1), min(replicas.max, desired))
        return desired, f"{self.metric} {value:.2f} / target {target:g} -> {desired}"

    def _metric(self, memory: _HpaPool, now: float, value: float) -> float:
        memory.samples.append((now, value))
        while memory.samples and memory.samples[0][0] < now - self.metric_window_s:
            memory.samples.popleft()
        return sum(v for _, v in memory.samples) / len(memory.samples)

    def _behave(self, memory: _HpaPool, now: float, current: int, raw: int) -> int:
        memory.recommendations.append((now, raw))
        while memory.recommendations[0][0] < now - self.downscale_window_s:
            memory.recommendations.popleft()
        stabilised = max(r for _, r in memory.recommendations)
        if raw > current:
            if now - memory.last_up < self.upscale_period_s:
                return current
            memory.last_up = now
            return min(raw, max(2 * current, current + 4))
        return min(current, stabilised)


def qps_scaler(targets: dict[str, float]) -> HpaScaler:
    """A QPS rule: the HPA algorithm on requests/s averaged over 60 s, `targets` per replica."""
    return HpaScaler(name="hpa-qps", metric="qps", targets=targets, metric_window_s=60.0)


@dataclass
class StaticScaler:
    counts: dict[str, int]
    name: str = "static-peak"
    scales: bool = False  # the gateway knows no replica is coming beyond these

    def __call__(self, pool: PoolState, snapshot: PoolSnapshot, view: TickView) -> tuple[int, str]:
        desired = self.counts[pool.name]
        return desired, f"static {desired}"
