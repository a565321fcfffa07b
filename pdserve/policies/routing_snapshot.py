"""The routing snapshot as a pure function of what is observed of both pools.

The route decision (`policies.routing.decide_route`) reads a `RoutingSnapshot`: how much prefill
work each pool has ahead of a new prompt and how fast one replica gets through it. This module
does that arithmetic over plain observations, with the clock as a field, so the gateway's pool
manager and the cluster simulator in bench/ compute it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.policies.types import RoutingSnapshot


@dataclass(frozen=True)
class ReplicaWork:
    """One replica's prefill work as the gateway counts it."""

    serving: bool  # ready, of the serving generation: may take a new request
    inflight_prompt_tokens: int = 0  # prompts sent to it (prefill hop) without an answer yet
    busy_since: float = 0.0  # when its in-flight count last rose from zero
    prefill_done_at: float = 0.0  # when its latest prefill reached a first token
    local_prefill_tokens: int = 0  # prompts sent to it to prefill locally, no first token yet
    running: int = 0  # sequences it is decoding (vllm:num_requests_running as scraped)


@dataclass(frozen=True)
class PoolWork:
    replicas: tuple[ReplicaWork, ...] = ()
    queued_prompt_tokens: int = 0  # held in the gateway for this pool
    measured_tokens_per_s: float | None = None  # one replica's prefill rate, once measured
    configured_tokens_per_s: float = 0.0  # the profile's estimate until then

    @property
    def tokens_per_s(self) -> float:
        return self.measured_tokens_per_s or self.configured_tokens_per_s

    def serving(self) -> list[ReplicaWork]:
        return [r for r in self.replicas if r.serving]


@dataclass(frozen=True)
class RoutingObservation:
    now: float
    prefill: PoolWork | None  # None: the profile has no prefill pool (or it is gone)
    decode: PoolWork | None = None


def routing_snapshot(observed: RoutingObservation) -> RoutingSnapshot:
    """Both pools' prefill work, as the route decision reads it."""
    prefill, decode = observed.prefill, observed.decode
    if prefill is None:
        return RoutingSnapshot(0, 0, 1.0)
    rate = prefill.tokens_per_s
    backlog = prefill.queued_prompt_tokens + sum(
        unfinished_tokens(r, rate, observed.now) for r in prefill.replicas
    )
    local = decode.serving() if decode is not None else []
    return RoutingSnapshot(
        prefill_ready=len(prefill.serving()),
        prefill_backlog_tokens=backlog,
        prefill_tokens_per_s=rate,
        local_ready=len(local),
        local_backlog_tokens=sum(r.local_prefill_tokens for r in local),
        local_tokens_per_s=decode.tokens_per_s if decode is not None else 0.0,
        local_running=sum(r.running for r in local),
    )


def unfinished_tokens(replica: ReplicaWork, tokens_per_s: float, now: float) -> int:
    """Prompt tokens a prefill replica still has to process: its in-flight prompts less what
    it has done since it started on the oldest of them (prompts are prefilled in order)."""
    started = max(replica.busy_since, replica.prefill_done_at)
    done = max(0.0, now - started) * tokens_per_s
    return max(0, replica.inflight_prompt_tokens - int(done))
