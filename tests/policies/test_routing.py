"""Table tests of the route rule's spill decision: the TTFT budget derived from measured rates,
and a local prefill only when the first token it gains outweighs the stall to running streams."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.policies.routing import decide_route, ttft_budget
from pdserve.policies.types import RoutingSnapshot
from pdserve.profile import Profile

pytestmark = pytest.mark.unit

PROMPT = 1800
RATE = 50.0  # tokens/s of one replica, both pools (a CPU core): one 1,800-token prefill = 36 s


def _profile(budget_s: float | None = None, itl_target_s: float = 0.2) -> Profile:
    routing: dict[str, Any] = {"mode": "disaggregated", "prefill_threshold": 256}
    if budget_s is not None:
        routing["ttft_budget_s"] = budget_s
    return Profile.model_validate(
        {
            "name": "t",
            "routing": routing,
            "pools": {
                "prefill": {"role": "prefill"},
                "decode": {"role": "decode", "scaling": {"target_itl_s": itl_target_s}},
            },
        }
    )


def _snap(
    backlog: int, running: int, local_ready: int = 1, local_backlog: int = 0
) -> RoutingSnapshot:
    return RoutingSnapshot(
        prefill_ready=1,
        prefill_backlog_tokens=backlog,
        prefill_tokens_per_s=RATE,
        local_ready=local_ready,
        local_backlog_tokens=local_backlog,
        local_tokens_per_s=RATE,
        local_running=running,
    )


SPILL = [
    # prefill backlog tokens, streams decoding, decode replicas -> route, reason fragment.
    # Budget (unset in the profile) = one local prefill = 1800 / 50 = 36 s.
    # 1800 / 50 = 36 s of backlog: not over the budget, no second look
    (1800, 9, 1, "disaggregated", "prefill backlog 36.00 s <= ttft budget 36 s (one local"),
    # 3600 / 50 = 72 s: via the prefill pool 72 + 36 = 108 s, locally 36 s: 72 s sooner;
    # no stream running, so nothing stalls
    (3600, 0, 1, "local", "72.00 s sooner vs stall 0 streams x (36.00 - 0.2) s = 0.00 s"),
    # 2 streams x (36 - 0.2) = 71.6 s of stall < 72 s gained
    (3600, 2, 1, "local", "first token locally in 36.00 s, 72.00 s sooner vs stall 2 streams"),
    # 3 streams x 35.8 = 107.4 s of stall > 72 s gained: stay on the prefill pool
    (3600, 3, 1, "disaggregated", "does not pay, 72.00 s sooner vs stall 3 streams x"),
    # the measurement: 4 chat streams on the one decode worker: 143.2 s > 72 s
    (3600, 4, 1, "disaggregated", "= 143.20 s"),
    # 7200 / 50 = 144 s backlog: 180 - 36 = 144 s gained > 107.4 s
    (7200, 3, 1, "local", "144.00 s sooner vs stall 3 streams"),
    # 6 streams over 2 decode replicas = 3 on the one it lands on: 107.4 s > 72 s
    (3600, 6, 2, "disaggregated", "stall 3 streams x (36.00 - 0.2) s = 107.40 s"),
]


@pytest.mark.parametrize(("backlog", "running", "replicas", "route", "reason"), SPILL)
def test_spill_weighs_the_stall_against_the_first_token_gained(
    backlog: int, running: int, replicas: int, route: str, reason: str
) -> None:
    decision = decide_route(_profile(), PROMPT, _snap(backlog, running, replicas))
    assert (decision.route, reason in decision.reason) == (route, True), decision.reason


def test_a_prefill_within_the_itl_target_stalls_nothing() -> None:
    # target 40 s > the 36 s prefill: max(0, 36 - 40) = 0 per stream, so 100 streams cost 0
    decision = decide_route(_profile(itl_target_s=40.0), PROMPT, _snap(3600, 100))
    assert decision.route == "local"
    assert "stall 100 streams x (36.00 - 40) s = 0.00 s" in decision.reason


def test_local_backlog_counts_before_the_prompt() -> None:
    # locally: 1800 queued / (50 x 1) + 36 = 72 s; via the prefill pool 72 + 36 = 108 s:
    # 36 s gained > 1 stream x 35.8 s of stall -> local, just
    decision = decide_route(_profile(), PROMPT, _snap(3600, 1, local_backlog=1800))
    assert decision.route == "local"
    assert "first token locally in 72.00 s, 36.00 s sooner" in decision.reason
    # one more queued local prompt: 108 s >= 108 s, no gain at all
    decision = decide_route(_profile(), PROMPT, _snap(3600, 0, local_backlog=3600))
    assert decision.route == "disaggregated"
    assert "local prefill 108.00 s >= 108.00 s via the prefill pool" in decision.reason


BUDGETS = [
    # profile override, decode prefill tok/s, prompt tokens -> budget s, basis
    (None, 50.0, 1800, 36.0, "one local prefill"),  # 1800 / 50
    (None, 250.0, 1800, 7.2, "one local prefill"),  # 1800 / 250: a 5x faster machine
    (None, 50.0, 300, 6.0, "one local prefill"),  # a shorter prompt waits less
    (7.0, 50.0, 1800, 7.0, "routing.ttft_budget_s"),  # the profile's constant wins when set
    (None, 0.0, 1800, float("inf"), "prefill rate is unknown"),  # never spill blind
]


@pytest.mark.parametrize(("override", "local_rate", "tokens", "budget", "basis"), BUDGETS)
def test_ttft_budget_is_derived_from_the_measured_rate(
    override: float | None, local_rate: float, tokens: int, budget: float, basis: str
) -> None:
    snap = RoutingSnapshot(1, 0, RATE, 1, 0, local_rate)
    got, why = ttft_budget(_profile(override).routing, tokens, snap)
    assert got == pytest.approx(budget)
    assert basis in why


@pytest.mark.parametrize("speed", [1.0, 5.0, 0.2])
def test_the_same_load_routes_the_same_on_a_faster_or_slower_machine(speed: float) -> None:
    # every rate x speed: every prefill time / speed, the budget included, so the decisions
    # hold (the ITL target stays 0.2 s, small beside the prefills); a constant budget would not
    for backlog, running, replicas, route, _ in SPILL:
        snap = _snap(backlog, running, replicas)
        scaled = RoutingSnapshot(
            snap.prefill_ready,
            snap.prefill_backlog_tokens,
            snap.prefill_tokens_per_s * speed,
            snap.local_ready,
            snap.local_backlog_tokens,
            snap.local_tokens_per_s * speed,
            snap.local_running,
        )
        assert decide_route(_profile(), PROMPT, scaled).route == route


def test_a_constant_budget_below_one_prefill_is_what_spilled_before() -> None:
    # 36 s of backlog, no stream running: with the profile's 7 s the rule looks again and
    # spills (36 + 36 = 72 s remote vs 36 s local); derived (36 s), it waits for the prefill pool
    assert decide_route(_profile(7.0), PROMPT, _snap(1800, 0)).route == "local"
    assert decide_route(_profile(), PROMPT, _snap(1800, 0)).route == "disaggregated"
