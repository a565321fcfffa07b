"""The typed inputs and decisions of pdserve's policies (routing, picking, autoscaling).

Policies are pure functions over these: a snapshot in, a decision carrying its reason out. The
gateway, the autoscaler and the cluster simulator in bench/ all build the same snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Route = Literal["disaggregated", "local"]

# Why a request took its route: a bounded set, so that metrics can carry it as a label (the
# reason string beside it has the numbers)
RouteCause = Literal[
    "standard_mode",  # routing mode is not disaggregated, or the profile has no prefill pool
    "short_prompt",  # uncached tokens below the prefill threshold
    "within_budget",  # a long prompt, the prefill backlog within the TTFT budget
    "cold_prefill_pool",  # no ready prefill replica: prefilled locally
    "hold_for_prefill",  # no ready prefill replica: held for one
    "spill",  # over the TTFT budget and a local prefill pays: prefilled locally
    "over_budget_kept",  # over the TTFT budget, a local prefill does not pay
    "prefill_pool_down",  # the prefill pool cannot serve or start: failed over to local
    "held_prefill_room",  # a held long prompt found room on the prefill pool
    "prefill_failed",  # the prefill hop failed: prefilled locally after all
]
ROUTE_CAUSES: tuple[RouteCause, ...] = get_args(RouteCause)


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
    # sequences decoding on the ready decode replicas: a local prefill stalls each of them
    local_running: int = 0


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    reason: str  # e.g. "1800 uncached tokens >= threshold 256"
    cause: RouteCause  # the reason's kind, e.g. "within_budget"


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
