"""The gateway's rollout state on a fake clock: windows trimmed to window_s, a canary rolled back
once it errs past the bound (with the figures in the reason), the schedule's steps, a manual
step resuming on fresh windows, and state across profile switches."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.gateway import model_routing
from pdserve.gateway.rollouts import Outcome, Pick, Rollouts, Window

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def profile(**rollout: Any) -> profiles.Profile:
    spec = {"model": "tiny", "stable": "tiny", "canary": "tiny-v2", **rollout}
    raw = {
        "model": {"name": "tiny"},
        "models": [{"name": "tiny-v2"}],
        "pools": {
            "a": {"role": "both", "model": "tiny"},
            "b": {"role": "both", "model": "tiny-v2"},
        },
        "routing": {"mode": "standard"},
        "rollouts": [spec],
    }
    return profiles.parse(raw, "t.yaml", "t")


BOUNDS = {"window_s": 10, "min_requests": 4, "max_error_rate_delta": 0.2, "max_ttft_p99_ratio": 3}


def rollouts(clock: Clock, *active: profiles.Profile) -> Rollouts:
    current = list(active)
    return Rollouts(lambda: current[-1], clock=clock, draw=lambda: 0.5, check_every_s=0)


def test_a_window_keeps_window_s_of_outcomes_and_takes_the_nearest_rank_p99() -> None:
    window = Window(10)
    for i in range(100):
        window.add(Outcome(at=float(i) / 10, error=i % 10 == 0, ttft_s=float(i)))
    figures = window.figures(9.9)  # p99: the ceil(0.99 x 100) = 99th smallest TTFT, 98
    assert (figures.requests, figures.errors, figures.ttft_p99_s) == (100, 10, 98.0)
    later = window.figures(15.0)  # (5.0, 15.0]: outcomes 51..99, p99 the 49th of 49
    assert (later.requests, later.errors, later.ttft_p99_s) == (49, 4, 99.0)
    assert window.figures(30).requests == 0 and window.figures(30).ttft_p99_s is None


def both(state: Rollouts) -> tuple[Pick, Pick]:
    """A stable and a canary pick of `tiny` at 50% (draws 0.9 and 0.1)."""
    chosen = []
    for draw in (0.9, 0.1):
        state.draw = lambda d=draw: d  # type: ignore[misc]
        pick = state.pick({"model": "tiny"}, [])
        assert pick is not None
        chosen.append(pick)
    assert [p.version for p in chosen] == ["stable", "canary"]
    return chosen[0], chosen[1]


def test_a_failing_canary_is_rolled_back_with_its_figures_and_stays_back() -> None:
    clock = Clock()
    state = rollouts(clock, profile(canary_percent=50, rollback=BOUNDS))
    stable, canary = both(state)
    assert (stable.served, canary.served) == ("tiny", "tiny-v2")
    for i in range(4):
        clock.now += 1
        state.record(stable, error=False, ttft_s=0.1)
        state.record(canary, error=i % 2 == 0, ttft_s=0.1)  # 2 of 4: 50% > 0% + 20%
    rollout = state.current()["tiny"]
    assert rollout.state == "rolled_back" and rollout.percent == 0
    assert rollout.reason == (
        "automatic rollback: canary error rate 50.0% > stable 0.0% + 20.0% (2/4 against 0/4)"
    )
    view = state.view()["tiny"]
    assert view["weights"] == {"stable": 100, "canary": 0}
    assert view["window"]["canary"]["errors"] == 2 and view["state"] == "rolled_back"
    clock.now += 100
    state.tick()
    assert state.current()["tiny"].percent == 0  # no schedule, and none while rolled back


def test_nothing_is_judged_below_min_requests_nor_on_outcomes_past_the_window() -> None:
    clock = Clock()
    state = rollouts(clock, profile(canary_percent=50, rollback=BOUNDS))
    rollout = state.current()["tiny"]
    stable, canary = both(state)
    for _ in range(3):
        state.record(canary, error=True, ttft_s=None)
        state.record(stable, error=False, ttft_s=0.1)
    assert rollout.state == "rolling"  # 3 requests each < min_requests 4
    clock.now += 10  # the window (10 s) has moved past them
    for _ in range(4):
        state.record(stable, error=False, ttft_s=0.1)
        state.record(canary, error=False, ttft_s=0.1)
    assert rollout.state == "rolling"
    state.record(canary, error=True, ttft_s=None)
    assert rollout.state == "rolling"  # 1/5 = 20% is not more than 0% + 20%
    state.record(canary, error=True, ttft_s=None)
    assert rollout.state == "rolled_back"  # 2/6 = 33% is


def test_ttft_p99_past_the_ratio_rolls_back() -> None:
    state = rollouts(Clock(), profile(canary_percent=50, rollback=BOUNDS))
    rollout = state.current()["tiny"]
    stable, canary = both(state)
    for _ in range(4):
        state.record(stable, error=False, ttft_s=0.1)
        state.record(canary, error=False, ttft_s=0.29)  # 290 ms <= 100 ms x 3: holds
    assert rollout.state == "rolling"
    state.record(canary, error=False, ttft_s=0.31)
    assert rollout.state == "rolled_back"
    assert rollout.reason == "automatic rollback: canary TTFT p99 310 ms > stable 100 ms x 3"


def test_the_schedule_steps_when_due_and_a_manual_step_resumes_on_fresh_windows() -> None:
    clock = Clock()
    state = rollouts(clock, profile(steps=[5, 50, 100], step_every_s=60))
    rollout = state.current()["tiny"]
    clock.now += 59
    state.tick()
    assert rollout.percent == 0
    clock.now += 1
    state.tick()
    assert (rollout.percent, rollout.reason) == (5, "scheduled: 0% -> 5% (60 s >= every 60 s)")
    state.roll_back("tiny", "admin: rolled back")
    clock.now += 600
    state.tick()
    assert rollout.state == "rolled_back" and rollout.percent == 0
    state.draw = lambda: 0.01
    pick = state.pick({"model": "tiny"}, [])
    assert pick is not None and pick.version == "stable"  # 0%: even the lowest draw
    state.record(pick, error=True, ttft_s=None)
    stepped = state.step("tiny", 50, "admin: canary to 50%")
    assert stepped is rollout and rollout.state == "rolling" and rollout.percent == 50
    assert rollout.windows["stable"].figures(clock.now).requests == 0  # judged afresh
    clock.now += 60
    state.tick()
    assert rollout.percent == 100 and rollout.state == "complete"
    assert state.step("other", 5, "x") is None


def test_state_follows_the_profile_kept_when_the_rollout_is_unchanged() -> None:
    clock = Clock()
    first = profile(canary_percent=5)
    active = [first]
    state = Rollouts(lambda: active[-1], clock=clock)
    state.step("tiny", 50, "admin")
    active.append(first.model_copy(update={"name": "renamed"}))  # the same rollout
    assert state.current()["tiny"].percent == 50
    active.append(profile(canary_percent=10))  # the rollout changed: its profile values
    assert state.current()["tiny"].percent == 10
    assert state.current()["tiny"].reason == "profile: starts at 10%"
    active.append(active[-1].model_copy(update={"rollouts": []}))
    assert state.current() == {} and state.pick({"model": "tiny"}, []) is None


def test_the_client_is_the_header_then_openais_user_field_and_an_alias_is_listed() -> None:
    raw = profile().model_dump(mode="json")
    raw["rollouts"] = [{"model": "chat", "stable": "tiny", "canary": "tiny-v2"}]
    raw["rollouts"][0].update(canary_percent=50, client_header="X-Team")
    aliased = profiles.parse(raw, "t.yaml", "t")
    state = rollouts(Clock(), aliased)
    header = [(b"x-team", b"c-1")]
    by_header = state.pick({"model": "chat", "user": "c-2"}, header)
    by_user = state.pick({"model": "chat", "user": "c-1"}, [])
    assert by_header is not None and by_user is not None
    assert by_header.version == by_user.version  # both name client c-1
    assert state.pick({"model": "tiny"}, header) is None  # no rollout of the stable's own name
    cards = model_routing.model_cards(aliased)
    assert [c["id"] for c in cards] == ["tiny", "tiny-v2", "chat"]
    assert cards[2]["max_model_len"] == cards[0]["max_model_len"]
