"""The typed inputs and decisions of pdserve's policies (routing, picking, autoscaling).

Policies are pure functions over these: a snapshot in, a decision carrying its reason out. The
gateway, the autoscaler and the cluster simulator in bench/ all build the same snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Route = Literal["disaggregated", "local"]


@dataclass(frozen=True)
class RoutingSnapshot:
    """What the route decision needs to know of both pools' prefill work right now."""

    prefill_ready: int  # ready prefill replicas (0 = cold or absent)
    prefill_backlog_tokens: int  # prompt tokens queued or prefilling on the prefill pool
    prefill_tokens_per_s: float  # one replica's prefill throughput (measured or configured)
    # the decode pool's own prefill work: prompts routed `local` that have no first token yet
    local_ready: int = 0  # ready decode replicas
    local_backlog_tokens: int = 0
    local_tokens_per_s: float = 0.0  # one decode replica's prefill throughput; 0 = unknown


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    reason: str  # e.g. "1800 uncached tokens >= threshold 256"


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica as the endpoint picker sees it (scraped vLLM metrics + gateway in-flight)."""

    id: str
    waiting: int = 0  # vllm:num_requests_waiting
    running: int = 0  # vllm:num_requests_running
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc, 0..1
    inflight: int = 0  # requests the gateway has sent and not yet seen finish

    @property
    def load(self) -> int:
        return max(self.inflight, self.waiting + self.running)


@dataclass(frozen=True)
class ScaleDecision:
    pool: str
    desired: int
    current: int
    reason: str  # e.g. "concurrency 37 > 4 x 8 target -> ceil(37 / 8) = 5"
    panic: bool = False
    at: float = 0.0  # the snapshot's clock

    @property
    def direction(self) -> Literal["up", "down", "none"]:
        if self.desired > self.current:
            return "up"
        return "down" if self.desired < self.current else "none"
