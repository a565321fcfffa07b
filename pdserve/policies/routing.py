"""The route decision: prefill on the prefill pool (disaggregated) or locally on the decode pool.

A pure function of the profile, the prompt's uncached token count and a snapshot of both pools'
prefill work. Long prompts go to the prefill pool while its backlog fits the TTFT budget: the
profile's `routing.ttft_budget_s` when set, else one prefill of the prompt at the decode pool's
measured rate (a backlog shorter than that cannot lose to a local prefill, so the budget follows
the machine instead of a constant written on another one). Past the budget a prompt is prefilled
locally only when it pays: the seconds its first token comes sooner there must exceed the stall
it causes, every stream running on that decode replica waiting out the prefill beyond the
decode pool's ITL target (`scaling.target_itl_s`). The reason string carries the arithmetic,
for logs, headers and the admin API.
"""

from __future__ import annotations

import math

from pdserve.policies.types import RouteDecision, RoutingSnapshot
from pdserve.profile import Profile, RoutingMode, RoutingSpec


def decide_route(profile: Profile, uncached_tokens: int, prefill: RoutingSnapshot) -> RouteDecision:
    """Disaggregated when the mode allows it, the prompt is long enough and the pool can take it."""
    routing = profile.routing
    if routing.mode is not RoutingMode.disaggregated or profile.prefill_pool is None:
        return RouteDecision(
            "local", f"routing mode {routing.mode.value}: no prefill pool", "standard_mode"
        )
    threshold = routing.prefill_threshold
    if uncached_tokens < threshold:
        return RouteDecision(
            "local", f"{uncached_tokens} uncached tokens < threshold {threshold}", "short_prompt"
        )
    if prefill.prefill_ready <= 0:
        if routing.local_prefill_when_cold:
            return RouteDecision(
                "local", "prefill pool has no ready replica: prefill locally", "cold_prefill_pool"
            )
        return RouteDecision(
            "disaggregated", "prefill pool has no ready replica: hold for it", "hold_for_prefill"
        )
    backlog_s = _seconds(
        prefill.prefill_backlog_tokens, prefill.prefill_tokens_per_s * prefill.prefill_ready
    )
    budget_s, basis = ttft_budget(routing, uncached_tokens, prefill)
    if backlog_s <= budget_s:
        return RouteDecision(
            "disaggregated",
            f"{uncached_tokens} uncached tokens >= threshold {threshold}, "
            f"prefill backlog {backlog_s:.2f} s <= ttft budget {budget_s:.3g} s ({basis})",
            "within_budget",
        )
    over = f"prefill backlog {backlog_s:.2f} s > ttft budget {budget_s:.3g} s ({basis})"
    itl_target_s = profile.pools[profile.decode_pool].scaling.target_itl_s
    return _spill_if_it_pays(uncached_tokens, backlog_s, itl_target_s, prefill, over)


def ttft_budget(
    routing: RoutingSpec, uncached_tokens: int, snap: RoutingSnapshot
) -> tuple[float, str]:
    """The backlog (seconds) a long prompt waits out on the prefill pool without a second look,
    and where that number came from."""
    if routing.ttft_budget_s is not None:
        return routing.ttft_budget_s, "routing.ttft_budget_s"
    if snap.local_tokens_per_s <= 0:
        return math.inf, "the decode pool's prefill rate is unknown"
    # e.g. 1800 tokens / 52.5 tok/s measured on the decode worker = 34.3 s
    return uncached_tokens / snap.local_tokens_per_s, "one local prefill"


def _spill_if_it_pays(
    uncached_tokens: int, backlog_s: float, itl_target_s: float, snap: RoutingSnapshot, over: str
) -> RouteDecision:
    """Over the budget: prefill locally only if the first token gained outweighs the stall."""
    if snap.local_ready <= 0:
        return RouteDecision(
            "disaggregated", f"{over}, but no decode replica is ready", "over_budget_kept"
        )
    if snap.local_tokens_per_s <= 0:
        return RouteDecision(
            "disaggregated", f"{over}, but the decode prefill rate is unknown", "over_budget_kept"
        )
    own_local_s = uncached_tokens / snap.local_tokens_per_s  # on the one replica it lands on
    # via the prefill pool: its backlog spread over its replicas, then this prompt on one
    remote_s = backlog_s + _seconds(uncached_tokens, snap.prefill_tokens_per_s)
    # locally: the local prompts already queued spread over the decode replicas, then this one
    local_s = _seconds(snap.local_backlog_tokens, snap.local_tokens_per_s * snap.local_ready)
    local_s += own_local_s
    if local_s >= remote_s:
        return RouteDecision(
            "disaggregated",
            f"{over}, but local prefill {local_s:.2f} s >= {remote_s:.2f} s via the prefill pool",
            "over_budget_kept",
        )
    gained_s = remote_s - local_s
    # every stream decoding on the replica waits out the prefill, less the ITL it expects anyway
    streams = snap.local_running / snap.local_ready
    stall_s = streams * max(0.0, own_local_s - itl_target_s)
    weighed = (
        f"{gained_s:.2f} s sooner vs stall {streams:.3g} streams x "
        f"({own_local_s:.2f} - {itl_target_s:g}) s = {stall_s:.2f} s"
    )
    if gained_s > stall_s:
        return RouteDecision(
            "local", f"{over}: first token locally in {local_s:.2f} s, {weighed}", "spill"
        )
    return RouteDecision(
        "disaggregated", f"{over}: local prefill does not pay, {weighed}", "over_budget_kept"
    )


def _seconds(tokens: int, tokens_per_s: float) -> float:
    """Seconds for a prefill capacity of `tokens_per_s` to process `tokens`."""
    if tokens <= 0:
        return 0.0
    return tokens / tokens_per_s if tokens_per_s > 0 else math.inf
