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
    queued_prompt_tokens: int  # prompt tokens of queued + waiting-in-worker requests
    running: int  # sum of vllm:num_requests_running over the pool's replicas
    waiting: int  # sum of vllm:num_requests_waiting
    inflight: int  # requests the gateway has outstanding on this pool's replicas
    kv_usage_max: float  # highest vllm:kv_cache_usage_perc among ready replicas (0..1)
    prefill_tokens_per_s: float | None = None  # measured per-replica prefill throughput

    @property
    def concurrency(self) -> int:
        """Requests queued at the gateway plus those in the pool's replicas."""
        return self.queued_requests + max(self.inflight, self.running + self.waiting)

    @property
    def current(self) -> int:
        """Replicas that exist and will serve (ready + starting)."""
        return self.ready + self.starting
