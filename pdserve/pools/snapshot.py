"""What the autoscaling policy sees of one pool at one instant: raw numbers, the clock a field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolSnapshot:
    pool: str
    now: float  # seconds, monotonic; policies never read a clock themselves
    ready: int  # replicas serving
    starting: int  # launched, not yet healthy
    draining: int
    queued_requests: int  # held at the gateway for this pool (no replica could take them)
    # prompt tokens held for the pool, in flight on it, and diverted (see diverted_requests)
    queued_prompt_tokens: int
    running: int  # sum of vllm:num_requests_running over the pool's replicas
    waiting: int  # sum of vllm:num_requests_waiting
    inflight: int  # requests the gateway has outstanding on this pool's replicas
    kv_usage_max: float  # highest vllm:kv_cache_usage_perc among ready replicas (0..1)
    prefill_tokens_per_s: float | None = None  # measured per-replica prefill throughput
    # the pool's prompts prefilled elsewhere (or held for that) because it was cold: they
    # count toward its demand all the same (`policies.admission.demand_pool`)
    diverted_requests: int = 0

    @property
    def wanted(self) -> int:
        """Requests waiting for this pool: held for it, or diverted while it is cold."""
        return self.queued_requests + self.diverted_requests

    @property
    def concurrency(self) -> int:
        """Requests queued at the gateway (or diverted) plus those in the pool's replicas."""
        return self.wanted + max(self.inflight, self.running + self.waiting)

    @property
    def current(self) -> int:
        """Replicas that exist and will serve (ready + starting)."""
        return self.ready + self.starting
