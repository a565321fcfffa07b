"""The route decision: prefill on the prefill pool (disaggregated) or locally on the decode pool.

A pure function of the profile, the prompt's uncached token count and a snapshot of both pools'
prefill work. Long prompts go to the prefill pool while its backlog fits the TTFT budget; past
the budget a prompt is prefilled on the decode pool only if its first token comes sooner there,
counting the prompts the decode pool is already prefilling, so an overloaded prefill pool
does not pile its backlog onto the decode replicas. The reason string says which rule decided,
for logs, headers and the admin API.
"""

from __future__ import annotations

from pdserve.policies.types import RouteDecision, RoutingSnapshot
from pdserve.profile import Profile, RoutingMode


def decide_route(profile: Profile, uncached_tokens: int, prefill: RoutingSnapshot) -> RouteDecision:
    """Disaggregated when the mode allows it, the prompt is long enough and the pool can take it."""
    routing = profile.routing
    if routing.mode is not RoutingMode.disaggregated or profile.prefill_pool is None:
        return RouteDecision("local", f"routing mode {routing.mode.value}: no prefill pool")
    threshold = routing.prefill_threshold
    if uncached_tokens < threshold:
        return RouteDecision("local", f"{uncached_tokens} uncached tokens < threshold {threshold}")
    if prefill.prefill_ready <= 0:
        if routing.local_prefill_when_cold:
            return RouteDecision("local", "prefill pool has no ready replica: prefill locally")
        return RouteDecision("disaggregated", "prefill pool has no ready replica: hold for it")
    backlog_s = _seconds(
        prefill.prefill_backlog_tokens, prefill.prefill_tokens_per_s, prefill.prefill_ready
    )
    if backlog_s <= routing.ttft_budget_s:
        return RouteDecision(
            "disaggregated",
            f"{uncached_tokens} uncached tokens >= threshold {threshold}, "
            f"prefill backlog {backlog_s:.2f} s",
        )
    return _overflow(uncached_tokens, backlog_s, routing.ttft_budget_s, prefill)


def _overflow(
    uncached_tokens: int, backlog_s: float, budget_s: float, snap: RoutingSnapshot
) -> RouteDecision:
    """Over the budget: prefill locally only if the decode pool would reach the first token
    sooner, counting the prompts it is already prefilling (each one stalls its running streams)."""
    over = f"prefill backlog {backlog_s:.2f} s > ttft budget {budget_s:g} s"
    if snap.local_tokens_per_s <= 0:  # the decode pool's prefill rate is unknown
        return RouteDecision("local", over)
    remote_s = backlog_s + _seconds(uncached_tokens, snap.prefill_tokens_per_s, snap.prefill_ready)
    local_s = _seconds(
        snap.local_backlog_tokens + uncached_tokens, snap.local_tokens_per_s, snap.local_ready
    )
    if local_s < remote_s:
        return RouteDecision("local", f"{over}: first token locally in {local_s:.2f} s")
    return RouteDecision(
        "disaggregated",
        f"{over}, but local prefill {local_s:.2f} s >= {remote_s:.2f} s via the prefill pool",
    )


def _seconds(tokens: int, tokens_per_s: float, replicas: int) -> float:
    """Seconds for `replicas` replicas of `tokens_per_s` each to prefill `tokens`."""
    capacity = tokens_per_s * replicas
    if tokens <= 0:
        return 0.0
    return tokens / capacity if capacity > 0 else float("inf")
