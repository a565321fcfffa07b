"""Table tests of the route decision and the endpoint pickers (pure functions)."""

from __future__ import annotations

from collections import Counter

import pytest

from pdserve.policies.picking import PickerState, pick, preferred_replica
from pdserve.policies.routing import decide_route
from pdserve.policies.types import ReplicaLoad, RoutingSnapshot
from pdserve.profile import Picker, Profile

pytestmark = pytest.mark.unit


def _profile(mode: str = "disaggregated", cold_local: bool = True) -> Profile:
    pools = {"decode": {"role": "decode" if mode == "disaggregated" else "both"}}
    if mode == "disaggregated":
        pools["prefill"] = {"role": "prefill"}
    return Profile.model_validate(
        {
            "name": "t",
            "routing": {
                "mode": mode,
                "prefill_threshold": 256,
                "ttft_budget_s": 2.0,
                "local_prefill_when_cold": cold_local,
            },
            "pools": pools,
        }
    )


ROUTES = [
    # mode, cold_local, tokens, ready, backlog, tokens/s -> route, reason fragment
    ("standard", True, 5000, 1, 0, 1000.0, "local", "mode standard"),
    ("disaggregated", True, 255, 1, 0, 1000.0, "local", "255 uncached tokens < threshold 256"),
    ("disaggregated", True, 256, 1, 0, 1000.0, "disaggregated", ">= threshold 256"),
    ("disaggregated", True, 1800, 0, 0, 1000.0, "local", "no ready replica: prefill locally"),
    ("disaggregated", False, 1800, 0, 0, 1000.0, "disaggregated", "hold for it"),
    # backlog 2000 / (1000 * 1) = 2.0 s, not above the 2 s budget
    ("disaggregated", True, 300, 1, 2000, 1000.0, "disaggregated", "backlog 2.00 s"),
    # backlog 2001 / (1000 * 1) = 2.001 s > 2 s, and no decode replica to spill to
    ("disaggregated", True, 300, 1, 2001, 1000.0, "disaggregated", "> ttft budget 2 s"),
    # backlog 3000 / (1000 * 2) = 1.5 s <= 2 s: a second replica halves it
    ("disaggregated", True, 300, 2, 3000, 1000.0, "disaggregated", "backlog 1.50 s"),
]

OVERFLOW = [
    # prefill pool: 1 replica at 1000 tok/s, backlog 3000 tokens = 3 s > the 2 s budget;
    # 1000-token prompt: via the prefill pool 3 + 1000 / 1000 = 4 s to its first token;
    # locally: the local backlog over all decode replicas, then 1000 tokens on one of them.
    # decode pool: replicas, local backlog tokens, tok/s -> route, reason fragment
    (1, 0, 500.0, "local", "first token locally in 2.00 s"),  # 1000 / 500 = 2 s < 4 s
    (1, 1000, 500.0, "disaggregated", "local prefill 4.00 s >= 4.00 s"),  # 1000/500 + 1000/500
    (2, 1000, 500.0, "local", "locally in 3.00 s"),  # 1000 / (500 * 2) + 1000 / 500 = 3 s
    (1, 5000, 1000.0, "disaggregated", "local prefill 6.00 s"),  # a pile of local prompts
    (0, 0, 1000.0, "disaggregated", "no decode replica is ready"),
    (1, 9999, 0.0, "disaggregated", "decode prefill rate is unknown"),  # cannot weigh it
]


@pytest.mark.parametrize(("ready", "backlog", "rate", "route", "reason"), OVERFLOW)
def test_over_budget_prefills_locally_only_when_the_first_token_comes_sooner(
    ready: int, backlog: int, rate: float, route: str, reason: str
) -> None:
    snapshot = RoutingSnapshot(1, 3000, 1000.0, ready, backlog, rate)
    decision = decide_route(_profile(), 1000, snapshot)
    assert decision.route == route
    assert reason in decision.reason
    assert "prefill backlog 3.00 s > ttft budget 2 s" in decision.reason


@pytest.mark.parametrize(
    ("mode", "cold_local", "tokens", "ready", "backlog", "rate", "route", "reason"), ROUTES
)
def test_decide_route(
    mode: str,
    cold_local: bool,
    tokens: int,
    ready: int,
    backlog: int,
    rate: float,
    route: str,
    reason: str,
) -> None:
    decision = decide_route(
        _profile(mode, cold_local), tokens, RoutingSnapshot(ready, backlog, rate)
    )
    assert decision.route == route
    assert reason in decision.reason


def _loads(*specs: tuple[str, int, int, int, float]) -> list[ReplicaLoad]:
    return [
        ReplicaLoad(id=i, waiting=w, running=r, inflight=f, kv_usage=kv) for i, w, r, f, kv in specs
    ]


LEAST = [
    # (id, waiting, running, inflight, kv) -> expected; load = max(inflight, waiting + running)
    ([("a", 0, 3, 0, 0.1), ("b", 1, 1, 0, 0.1)], "b"),  # 3 vs 2
    ([("a", 0, 0, 4, 0.1), ("b", 0, 3, 0, 0.1)], "b"),  # in-flight 4 counts over scraped 0
    ([("a", 0, 2, 0, 0.5), ("b", 0, 2, 0, 0.2)], "b"),  # tie on load: lower kv usage
    ([("b", 0, 2, 0, 0.2), ("a", 0, 2, 0, 0.2)], "a"),  # full tie: lowest id
]


@pytest.mark.parametrize(("specs", "expected"), LEAST)
def test_least_load(specs: list[tuple[str, int, int, int, float]], expected: str) -> None:
    chosen, state = pick(Picker.least_load, _loads(*specs), PickerState(), None, 8)
    assert chosen == expected
    assert state == PickerState()


def test_round_robin_cycles_in_id_order() -> None:
    replicas = _loads(("c", 0, 0, 0, 0.0), ("a", 9, 9, 0, 0.0), ("b", 0, 0, 0, 0.0))
    state = PickerState()
    seen = []
    for _ in range(6):
        chosen, state = pick(Picker.round_robin, replicas, state, None, 8)
        seen.append(chosen)
    assert seen == ["a", "b", "c", "a", "b", "c"]


def test_prefix_affinity_is_sticky_and_spreads_keys() -> None:
    replicas = _loads(*[(f"r{i}", 0, 0, 0, 0.0) for i in range(4)])
    owners = Counter()
    for n in range(400):
        key = f"prefix-{n}"
        first, _ = pick(Picker.prefix_affinity, replicas, PickerState(), key, 8)
        again, _ = pick(Picker.prefix_affinity, list(reversed(replicas)), PickerState(), key, 8)
        assert first == again
        owners[first] += 1
    # 400 keys over 4 replicas: each near 100; rendezvous hashing is roughly uniform
    assert all(60 <= count <= 140 for count in owners.values()), owners


def test_prefix_affinity_moves_only_the_removed_replicas_keys() -> None:
    replicas = _loads(*[(f"r{i}", 0, 0, 0, 0.0) for i in range(4)])
    fewer = replicas[:3]
    for n in range(200):
        key = f"k{n}"
        before = preferred_replica(replicas, key).id
        after = preferred_replica(fewer, key).id
        if before != "r3":
            assert after == before


def test_prefix_affinity_over_cap_falls_back_to_least_load() -> None:
    key = "hot prefix"
    idle = _loads(("a", 0, 0, 0, 0.0), ("b", 0, 0, 0, 0.0), ("c", 0, 0, 0, 0.0))
    preferred = preferred_replica(idle, key).id
    busy = [
        ReplicaLoad(id=r.id, running=9 if r.id == preferred else 1 + (r.id == "c")) for r in idle
    ]
    chosen, _ = pick(Picker.prefix_affinity, busy, PickerState(), key, 8)  # load 9 > cap 8
    others = sorted((r for r in busy if r.id != preferred), key=lambda r: (r.load, r.id))
    assert chosen == others[0].id
    at_cap = [ReplicaLoad(id=r.id, running=8 if r.id == preferred else 0) for r in idle]
    assert pick(Picker.prefix_affinity, at_cap, PickerState(), key, 8)[0] == preferred


def test_prefix_affinity_without_key_is_least_load() -> None:
    replicas = _loads(("a", 0, 5, 0, 0.0), ("b", 0, 1, 0, 0.0))
    assert pick(Picker.prefix_affinity, replicas, PickerState(), None, 8)[0] == "b"


def test_pick_needs_a_replica() -> None:
    with pytest.raises(ValueError):
        pick(Picker.least_load, [], PickerState(), None, 8)
