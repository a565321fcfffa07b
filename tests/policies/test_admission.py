"""Admission arithmetic: replica capacity, choosing a replica with room, release order, demand
accounting, cold-versus-broken and the early-refusal decision, as tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from pdserve.policies.admission import (
    CapacityLimits,
    DemandCounts,
    StartOutlook,
    admission_decision,
    ahead_of,
    can_hold,
    choose_with_room,
    counted_demand,
    demand_pool,
    kv_slots,
    release_order,
    replica_capacity,
    shed_victim,
    start_wait_s,
    target_binds,
)
from pdserve.policies.picking import PickerState
from pdserve.policies.types import ReplicaLoad
from pdserve.profile import Picker, Profile

pytestmark = pytest.mark.unit


def _load(rid: str = "r", inflight: int = 0, running: int = 0, kv: float = 0.0) -> ReplicaLoad:
    return ReplicaLoad(id=rid, running=running, kv_usage=kv, inflight=inflight)


CAPACITY = [
    # (load, limits, slots, bound)
    (_load(), CapacityLimits(64), 64, "max_num_seqs 64"),  # nothing else binds
    # kv 0.45 for 9 running = 0.05 each; watermark 0.9 / 0.05 = 18 sequences
    (_load(running=9, kv=0.45), CapacityLimits(64, kv_high_watermark=0.9), 18, "kv"),
    # the pool's target 4 binds below 64 and kv 0.2/2 = 0.1 each -> 9
    (_load(running=2, kv=0.2), CapacityLimits(64, 4, None, 0.9), 4, "target 4"),
    # target 2.5 rounds up: ceil(2.5) = 3
    (_load(), CapacityLimits(64, 2.5), 3, "target 3"),
    # the configured cap 2 is tighter than target 4
    (_load(), CapacityLimits(64, 4, 2), 2, "cap 2"),
    # kv above the watermark: 0.95 for 10 running = 0.095 each; 0.9 / 0.095 = 9.47 -> 9
    (_load(running=10, kv=0.95), CapacityLimits(64, None, None, 0.9), 9, "kv"),
    # max_num_seqs 8 below target 16
    (_load(), CapacityLimits(8, 16), 8, "max_num_seqs 8"),
    # one sequence holds 0.95 of the cache: 0.9 / 0.95 = 0.95 -> 0, but a replica takes one
    (_load(running=1, kv=0.95), CapacityLimits(64, None, None, 0.9), 1, "kv"),
]


@pytest.mark.parametrize(("load", "limits", "slots", "bound"), CAPACITY)
def test_replica_capacity_is_the_tightest_limit(
    load: ReplicaLoad, limits: CapacityLimits, slots: int, bound: str
) -> None:
    capacity = replica_capacity(load, limits)
    assert capacity.slots == slots
    assert capacity.bound.startswith(bound)


def test_kv_slots_needs_something_running() -> None:
    assert kv_slots(_load(running=0, kv=0.3), 0.9) is None  # usage of what? nothing runs
    assert kv_slots(_load(running=3, kv=0.0), 0.9) is None
    assert kv_slots(_load(running=3, kv=0.3), 0.9) == 9  # 0.9 / (0.3 / 3) = 9


TARGET_BINDS = [
    # (ready, starting, max, can_start, binds)
    (1, 0, 8, True, True),  # can grow: 1 < 8
    (8, 0, 8, True, False),  # at max: the engine's limits bind
    (7, 1, 8, True, True),  # one is starting: capacity is coming
    (1, 0, 1, False, False),  # static: nothing can start
    (0, 1, 1, False, True),  # starting even though nothing more can start
]


@pytest.mark.parametrize(("ready", "starting", "high", "can_start", "binds"), TARGET_BINDS)
def test_target_binds_only_while_capacity_is_coming(
    ready: int, starting: int, high: int, can_start: bool, binds: bool
) -> None:
    assert target_binds(ready, starting, high, can_start) is binds


def test_choose_with_room_skips_full_replicas_and_returns_none_when_all_are() -> None:
    limits = CapacityLimits(64, 4)
    full, roomy = _load("a", inflight=4), _load("b", inflight=3)
    chosen, _ = choose_with_room(Picker.least_load, [full, roomy], limits, PickerState(), None, 8)
    assert chosen == "b"
    # prefix affinity prefers a full replica? only replicas with room are candidates
    for key in ("k1", "k2", "k3", "k4"):
        chosen, _ = choose_with_room(
            Picker.prefix_affinity, [full, roomy], limits, PickerState(), key, 8
        )
        assert chosen == "b"
    none, state = choose_with_room(
        Picker.round_robin, [full, _load("c", inflight=5)], limits, PickerState(3), None, 8
    )
    assert none is None and state == PickerState(3)  # state untouched when nothing is chosen


@dataclass(frozen=True)
class Held:
    name: str
    priority: int
    arrival: int


HELD = [Held("a", 0, 1), Held("b", 5, 2), Held("c", 0, 0), Held("d", 5, 3), Held("e", 9, 4)]


def test_release_order_is_priority_then_fifo() -> None:
    assert [h.name for h in release_order(HELD)] == ["e", "b", "d", "c", "a"]


AHEAD = [
    # (priority, arrival, ahead)
    (10, 10, 0),  # above every priority held: nobody ahead
    (9, 10, 1),  # e (9) arrived earlier
    (5, 10, 3),  # e (9), b and d (5, earlier)
    (5, 0, 1),  # only e: arrived before b and d
    (0, 10, 5),  # lowest, newest: everyone
    (-1, 0, 5),  # below every priority held
]


@pytest.mark.parametrize(("priority", "arrival", "ahead"), AHEAD)
def test_ahead_of_counts_higher_priorities_and_earlier_equals(
    priority: int, arrival: int, ahead: int
) -> None:
    assert ahead_of(HELD, priority, arrival) == ahead


def test_shed_victim_is_the_lowest_newest_below_the_newcomer() -> None:
    victim = shed_victim(HELD, priority=3)
    assert victim is not None and victim.name == "a"  # priority 0, arrival 1 (newer than c)
    assert shed_victim(HELD, priority=0) is None  # a newcomer of 0 ranks no higher: refuse it
    assert shed_victim([], priority=5) is None


def _profile(mode: str = "disaggregated") -> Profile:
    pools: dict[str, object] = {"decode": {"role": "decode"}}
    if mode == "disaggregated":
        pools["prefill"] = {"role": "prefill"}
    return Profile.model_validate(
        {"name": "p", "routing": {"mode": mode, "prefill_threshold": 512}, "pools": pools}
    )


DEMAND_POOL = [
    ("disaggregated", 512, "prefill"),  # at the threshold: the prefill pool's demand
    ("disaggregated", 7000, "prefill"),
    ("disaggregated", 511, "decode"),  # below it: prefilled where it decodes
    ("standard", 7000, "decode"),  # no prefill pool
]


@pytest.mark.parametrize(("mode", "tokens", "pool"), DEMAND_POOL)
def test_demand_pool_is_where_the_route_rule_sends_work(mode: str, tokens: int, pool: str) -> None:
    assert demand_pool(_profile(mode), tokens) == pool


def test_counted_demand_adds_held_sent_and_diverted() -> None:
    # 2 held (1,000 tok) + 1 prefilling (7,000) + 1 prefilled locally while cold (7,000)
    total = counted_demand(DemandCounts(2, 1000), DemandCounts(1, 7000), DemandCounts(1, 7000))
    assert total == DemandCounts(4, 15_000)


CAN_HOLD = [
    # (ready, starting, startable, hold)
    (1, 0, 0, True),
    (0, 1, 0, True),  # cold: starting
    (0, 0, 3, True),  # cold: at zero, can start
    (0, 0, 0, False),  # broken: a static pool whose only worker died
]


@pytest.mark.parametrize(("ready", "starting", "startable", "hold"), CAN_HOLD)
def test_cold_is_not_broken(ready: int, starting: int, startable: int, hold: bool) -> None:
    assert can_hold(ready, starting, startable) is hold


WAITS = [
    # (needed, releases/s, arrivals, wait)
    (0, 0.0, (), 0.0),
    (4, 2.0, (), 2.0),  # 4 / 2 per s
    (4, 0.0, (), math.inf),  # nothing finishes, nothing comes
    (4, 0.0, ((30.0, 4),), 30.0),  # a replica of 4 slots ready in 30 s
    (4, 0.0, ((30.0, 2),), math.inf),  # 2 slots are not enough
    (4, 1.0, ((30.0, 8),), 4.0),  # releases cover it first: 4 / 1 = 4 s < 30 s
    (40, 1.0, ((30.0, 8),), 32.0),  # 30 s -> 30 released + 8 = 38; then 2 more at 1/s = 32 s
    (10, 0.5, ((5.0, 4), (10.0, 4)), 10.0),  # at 10 s: 5 released + 8 arrived = 13 >= 10
    (3, 0.0, ((-2.0, 4),), 0.0),  # overdue arrival counts as now
]


@pytest.mark.parametrize(("needed", "rate", "arrivals", "wait"), WAITS)
def test_start_wait(
    needed: int, rate: float, arrivals: tuple[tuple[float, int], ...], wait: float
) -> None:
    assert start_wait_s(needed, rate, arrivals) == pytest.approx(wait)


DECISIONS = [
    # (outlook, deadline, action, retry_after)
    (StartOutlook(ahead=0, free_slots=1), 10, "admit", None),
    # the 2 free slots go to the 2 ahead; the third frees in 1 / 1 per s = 1 s
    (StartOutlook(ahead=2, free_slots=2, releases_per_s=1.0), 10, "hold", None),
    # 5 ahead, 0 free: 6 slots at 1/s = 6 s <= 10
    (StartOutlook(5, 0, 1.0), 10, "hold", None),
    # 20 ahead: 21 s at 1/s > 10 -> refuse, come back in 21 s
    (StartOutlook(20, 0, 1.0), 10, "refuse", 21.0),
    # a cold pool: a replica of 4 slots in 100 s; 2 ahead -> 3 needed -> 100 s > 30 s
    (StartOutlook(2, 0, 0.0, ((100.0, 4),)), 30, "refuse", 100.0),
    # the same with a 120 s deadline: hold
    (StartOutlook(2, 0, 0.0, ((100.0, 4),)), 120, "hold", None),
    # nothing is coming at all: refuse, retry after the deadline
    (StartOutlook(0, 0), 15, "refuse", 15.0),
    # the release rate is not measured yet: hold rather than refuse on a guess
    (StartOutlook(50, 0, None), 1, "hold", None),
]


@pytest.mark.parametrize(("outlook", "deadline", "action", "retry"), DECISIONS)
def test_admission_decision(
    outlook: StartOutlook, deadline: float, action: str, retry: float | None
) -> None:
    decision = admission_decision(outlook, deadline)
    assert decision.action == action, decision.reason
    assert decision.retry_after_s == (pytest.approx(retry) if retry is not None else None)
    assert decision.reason


def test_lower_priorities_are_refused_first() -> None:
    # one queue, 10 s deadline, 1 slot/s released: a priority-9 newcomer has 0 ahead (hold),
    # a priority-0 one has all 12 ahead of it (13 s > 10 s: refuse)
    held = [Held(f"h{i}", 5, i) for i in range(12)]
    high = StartOutlook(ahead_of(held, 9, 99), 0, 1.0)
    low = StartOutlook(ahead_of(held, 0, 99), 0, 1.0)
    assert admission_decision(high, 10).action == "hold"
    assert admission_decision(low, 10).action == "refuse"
