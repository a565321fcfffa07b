"""Every route decision names its cause from the bounded set that metrics label requests by."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.policies.routing import decide_route
from pdserve.policies.types import ROUTE_CAUSES, RoutingSnapshot
from pdserve.profile import Profile

pytestmark = pytest.mark.unit

RATE = 50.0  # tokens/s of one replica, both pools


def _profile(mode: str = "disaggregated", when_cold: bool = True) -> Profile:
    routing: dict[str, Any] = {
        "mode": mode,
        "prefill_threshold": 256,
        "local_prefill_when_cold": when_cold,
    }
    pools: dict[str, Any] = {"decode": {"role": "decode"}}
    if mode == "disaggregated":
        pools["prefill"] = {"role": "prefill"}
    return Profile.model_validate({"name": "t", "routing": routing, "pools": pools})


def _snap(prefill_ready: int = 1, backlog: int = 0, running: int = 0) -> RoutingSnapshot:
    return RoutingSnapshot(
        prefill_ready=prefill_ready,
        prefill_backlog_tokens=backlog,
        prefill_tokens_per_s=RATE,
        local_ready=1,
        local_tokens_per_s=RATE,
        local_running=running,
    )


CASES = [
    # profile, uncached tokens, snapshot -> route, cause
    (_profile("standard"), 5000, _snap(), "local", "standard_mode"),
    (_profile(), 100, _snap(), "local", "short_prompt"),  # 100 < 256
    (_profile(), 1800, _snap(), "disaggregated", "within_budget"),  # backlog 0 s
    (_profile(), 1800, _snap(prefill_ready=0), "local", "cold_prefill_pool"),
    (_profile(when_cold=False), 1800, _snap(prefill_ready=0), "disaggregated", "hold_for_prefill"),
    # 7200 / 50 = 144 s backlog > 36 s budget; nothing running, so a local prefill pays
    (_profile(), 1800, _snap(backlog=7200), "local", "spill"),
    # 3600 / 50 = 72 s gained < 4 streams x 35.8 s of stall
    (_profile(), 1800, _snap(backlog=3600, running=4), "disaggregated", "over_budget_kept"),
]


@pytest.mark.parametrize(("profile", "tokens", "snap", "route", "cause"), CASES)
def test_each_decision_names_its_cause(
    profile: Profile, tokens: int, snap: RoutingSnapshot, route: str, cause: str
) -> None:
    decision = decide_route(profile, tokens, snap)
    assert (decision.route, decision.cause) == (route, cause), decision.reason
    assert decision.cause in ROUTE_CAUSES
