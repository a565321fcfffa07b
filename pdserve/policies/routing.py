"""The route decision: prefill on the prefill pool (disaggregated) or locally on the decode pool.

A pure function of the profile, the prompt's uncached token count and a snapshot of the prefill
pool. The reason string says which rule decided, for logs, headers and the admin API.
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
    capacity = prefill.prefill_tokens_per_s * prefill.prefill_ready
    backlog_s = prefill.prefill_backlog_tokens / capacity if capacity > 0 else float("inf")
    if backlog_s > routing.ttft_budget_s:
        return RouteDecision(
            "local",
            f"prefill backlog {backlog_s:.2f} s > ttft budget {routing.ttft_budget_s:g} s",
        )
    return RouteDecision(
        "disaggregated",
        f"{uncached_tokens} uncached tokens >= threshold {threshold}, "
        f"prefill backlog {backlog_s:.2f} s",
    )
