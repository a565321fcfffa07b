"""Table tests of the live switch's pure plan: what each pool's step is, and why."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.pools.switch_plan import (
    AddPool,
    Adopt,
    Drain,
    Drop,
    Generation,
    Need,
    PoolObservation,
    Reuse,
    StartGeneration,
    SwitchPlan,
    plan_switch,
    switch_ready,
)
from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Profile

pytestmark = pytest.mark.unit


def _profile(name: str, prefill: dict[str, Any] | None, **decode: Any) -> Profile:
    pools: dict[str, Any] = {"decode": {"role": "decode" if prefill else "both", **decode}}
    if prefill is not None:
        pools["prefill"] = {"role": "prefill", **prefill}
    mode = "disaggregated" if prefill is not None else "standard"
    return Profile.model_validate({"name": name, "routing": {"mode": mode}, "pools": pools})


STANDARD = _profile("standard", None)
STANDARD_TUNED = _profile("tuned", None, scaling={"target_concurrency": 3})  # no restart
STANDARD_TP2 = _profile("tp2", None, tensor_parallel_size=2)  # a new worker spec
DISAGG = _profile("disagg", {"replicas": {"min": 0, "initial": 1}})
DISAGG_TP2 = _profile(
    "disagg-tp2", {"replicas": {"min": 0, "initial": 1}, "tensor_parallel_size": 2}
)

BOTH = worker_spec_key(STANDARD, "decode")  # the unified pool's generation
BOTH_TP2 = worker_spec_key(STANDARD_TP2, "decode")
DECODE = worker_spec_key(DISAGG, "decode")
PREFILL = worker_spec_key(DISAGG, "prefill")
PREFILL_TP2 = worker_spec_key(DISAGG_TP2, "prefill")


def _pool(
    name: str, key: str, members: int = 1, ready: int = 1, retiring: bool = False
) -> PoolObservation:
    return PoolObservation(name, key, retiring, (Generation(key, members, ready),))


PLANS = [
    pytest.param(
        [_pool("decode", BOTH)],
        STANDARD_TUNED,
        [Reuse("decode", f"worker spec {BOTH} unchanged: 1 replica kept")],
        [],
        id="scaling-only change reuses the pool",
    ),
    pytest.param(
        [_pool("decode", BOTH, members=2, ready=2)],
        STANDARD_TP2,
        [
            StartGeneration(
                "decode",
                BOTH_TP2,
                1,
                f"worker spec changed ({BOTH} -> {BOTH_TP2}): 1 replica of {BOTH_TP2} start "
                f"beside 2 of {BOTH}",
            )
        ],
        [
            Drain(
                "decode", BOTH_TP2, f"2 replicas of generation {BOTH} drain once {BOTH_TP2} serves"
            )
        ],
        id="a changed worker spec starts a generation and drains the old one on finish",
    ),
    pytest.param(
        [_pool("decode", DECODE)],
        DISAGG,
        [
            Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept"),
            AddPool("prefill", 1, f"new pool: 1 replica of generation {PREFILL} start"),
        ],
        [],
        id="a pool the new profile adds",
    ),
    pytest.param(
        [_pool("decode", DECODE)],
        _profile("prefill-at-zero", {"replicas": {"min": 0}}),
        [
            Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept"),
            AddPool("prefill", 0, f"new pool: 0 replicas of generation {PREFILL} start"),
        ],
        [],
        id="absent pool with min 0 is added at zero",
    ),
    pytest.param(
        [_pool("prefill", PREFILL, members=3, ready=2), _pool("decode", DECODE)],
        _profile("standard-decode", None, role="decode"),
        [Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept")],
        [Drop("prefill", "not in profile standard-decode: 3 replicas drain")],
        id="a pool the new profile drops drains on finish",
    ),
    pytest.param(
        [_pool("prefill", PREFILL, 0, 0, retiring=True), _pool("decode", DECODE)],
        DISAGG,
        [
            Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept"),
            Adopt(
                "prefill",
                1,
                f"dropped by an earlier switch, still draining: 1 replica of {PREFILL} start",
            ),
        ],
        [],
        id="a pool switched back while draining is re-adopted",
    ),
    pytest.param(
        [_pool("prefill", PREFILL, 0, 0, retiring=True), _pool("decode", DECODE)],
        DISAGG_TP2,
        [
            Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept"),
            Adopt(
                "prefill",
                1,
                f"dropped by an earlier switch, still draining: 1 replica of {PREFILL_TP2} start",
            ),
        ],
        [
            Drain(
                "prefill",
                PREFILL_TP2,
                f"0 replicas of generation {PREFILL} drain once {PREFILL_TP2} serves",
            )
        ],
        id="re-adopted with a new spec: its older generation drains on finish",
    ),
    pytest.param(
        [_pool("prefill", PREFILL, 0, 0, retiring=True), _pool("decode", DECODE)],
        _profile("standard-decode", None, role="decode"),
        [Reuse("decode", f"worker spec {DECODE} unchanged: 1 replica kept")],
        [],
        id="a pool already draining is not dropped twice",
    ),
]


@pytest.mark.parametrize(("pools", "new", "start", "finish"), PLANS)
def test_plan_switch(
    pools: list[PoolObservation], new: Profile, start: list[Any], finish: list[Any]
) -> None:
    plan = plan_switch(pools, new)
    assert plan.profile == new.name
    assert list(plan.start) == start
    assert list(plan.finish) == finish


def test_the_plan_needs_each_pool_of_the_new_profile_at_its_generation() -> None:
    plan = plan_switch([_pool("decode", BOTH)], DISAGG_TP2)
    assert {(n.pool, n.generation, n.replicas) for n in plan.needs} == {
        ("decode", DECODE, 1),
        ("prefill", PREFILL_TP2, 1),
    }


def _needs(*needs: tuple[str, str, int]) -> SwitchPlan:
    return SwitchPlan("new", (), (), tuple(Need(*n) for n in needs))


def _gens(name: str, serving: str, *gens: tuple[str | None, int, int]) -> PoolObservation:
    return PoolObservation(name, serving, False, tuple(Generation(*g) for g in gens))


READINESS = [
    pytest.param(
        [_gens("decode", "old", ("old", 2, 2), ("new", 1, 0))],
        _needs(("decode", "new", 1)),
        (False, "pool decode has no ready replica of generation new"),
        id="only the old generation is ready: requests keep the old profile",
    ),
    pytest.param(
        [_gens("decode", "old", ("old", 1, 1), ("new", 1, 1))],
        _needs(("decode", "new", 1)),
        (True, "every pool of new has a ready replica of its generation"),
        id="one ready replica of the new generation is enough",
    ),
    pytest.param(
        [_gens("decode", "old", (None, 1, 1))],
        _needs(("decode", "new", 1)),
        (True, "every pool of new has a ready replica of its generation"),
        id="an unlabelled (static) endpoint serves every generation",
    ),
    pytest.param(
        [_gens("decode", "d", ("d", 1, 1))],
        _needs(("decode", "d", 1), ("prefill", "p", 1)),
        (False, "pool prefill does not exist yet"),
        id="a needed pool that is absent",
    ),
    pytest.param(
        [_gens("decode", "d", ("d", 1, 1)), _gens("prefill", "p")],
        _needs(("decode", "d", 1), ("prefill", "p", 0)),
        (True, "every pool of new has a ready replica of its generation"),
        id="a pool that starts at zero needs no ready replica",
    ),
]


@pytest.mark.parametrize(("pools", "plan", "expected"), READINESS)
def test_switch_ready(
    pools: list[PoolObservation], plan: SwitchPlan, expected: tuple[bool, str]
) -> None:
    readiness = switch_ready(pools, plan)
    assert (readiness.ready, readiness.reason) == expected


NEEDS = [
    pytest.param(
        [_pool("decode", DECODE), _pool("prefill", PREFILL, ready=0)],
        _profile("disagg-routing", {"replicas": {"min": 0, "initial": 1}}),
        set(),
        id="no pool changes its worker spec: nothing to wait for, a down pool included",
    ),
    pytest.param(
        [_pool("decode", DECODE), _pool("prefill", PREFILL, ready=0)],
        DISAGG_TP2,
        {("prefill", PREFILL_TP2, 1)},
        id="only the pool that starts a new generation is waited for",
    ),
    pytest.param(
        [_pool("decode", DECODE, ready=0), _pool("prefill", PREFILL)],
        DISAGG_TP2,
        {("prefill", PREFILL_TP2, 1)},
        id="an unchanged pool that is down does not hold back a changed one",
    ),
]


@pytest.mark.parametrize(("pools", "new", "needs"), NEEDS)
def test_a_reused_pool_is_not_a_need(
    pools: list[PoolObservation], new: Profile, needs: set[tuple[str, str, int]]
) -> None:
    plan = plan_switch(pools, new)
    assert {(n.pool, n.generation, n.replicas) for n in plan.needs} == needs
    if not needs:
        readiness = switch_ready(pools, plan)
        expected = "no pool of disagg-routing starts workers: it applies at once"
        assert (readiness.ready, readiness.reason) == (True, expected)
