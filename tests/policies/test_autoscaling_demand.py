"""The autoscaling policy's view of issue 18's demand: prompts prefilled elsewhere while a pool is
cold count toward it (a pool at zero wakes on the first one), and `headroom` keeps spare
replicas above demand while there is demand. Expected arithmetic in comments."""

from __future__ import annotations

import pytest

from pdserve.policies.autoscaling import AutoscaleState, decide
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Replicas, Role, ScalingSpec

pytestmark = pytest.mark.unit

PREFILL = PoolSpec(
    role=Role.prefill,
    replicas=Replicas(min=0, max=8, initial=1),
    scaling=ScalingSpec(target_backlog_s=1, prefill_tokens_per_s=20_000, stable_window_s=10),
)


def snap(
    now: float, ready: int, *, diverted: int = 0, tokens: int = 0, running: int = 0
) -> PoolSnapshot:
    return PoolSnapshot(
        pool="p",
        now=now,
        ready=ready,
        starting=0,
        draining=0,
        queued_requests=0,
        queued_prompt_tokens=tokens,
        running=running,
        waiting=0,
        inflight=running,
        kv_usage_max=0.0,
        diverted_requests=diverted,
    )


def test_a_prompt_prefilled_locally_while_the_pool_is_cold_wakes_it() -> None:
    # 7,000 tok / 20,000 tok/s = 0.35 s / 1 s target = 0.35 replicas, but 1 wanted -> 1
    decision, _ = decide(
        snap(0, 0, diverted=1, tokens=7000), AutoscaleState(), PREFILL, Role.prefill
    )
    assert (decision.current, decision.desired) == (0, 1)
    assert "1 prefilled elsewhere while cold" in decision.reason
    # the same pool with nothing diverted stays at zero (what issue 18 measured on main)
    still, _ = decide(snap(0, 0), AutoscaleState(), PREFILL, Role.prefill)
    assert still.desired == 0


def test_diverted_prompts_keep_a_pool_from_scaling_to_zero() -> None:
    spec = PREFILL.model_copy(
        update={"scaling": PREFILL.scaling.model_copy(update={"scale_to_zero_grace_s": 5})}
    )
    state = AutoscaleState()
    desired = []
    for now in range(12):  # served locally for 12 s (e.g. a pool that keeps being spilled)
        decision, state = decide(snap(now, 1, diverted=1, tokens=100), state, spec, Role.prefill)
        desired.append(decision.desired)
    assert desired == [1] * 12  # never idle: the grace never starts


DECODE = PoolSpec(
    role=Role.decode,
    replicas=Replicas(min=1, max=8),
    scaling=ScalingSpec(target_concurrency=8, stable_window_s=10, headroom=2),
)


@pytest.mark.parametrize(
    ("ready", "running", "expected"),
    [
        (3, 16, 4),  # 16 / 8 = 2 + headroom 2 = 4 (x2 rate limit from 3 allows it)
        (4, 16, 4),  # steady with its headroom
        (2, 1, 2),  # 1 / 8 = 0.12 + 2 = 2.12: within 10% of 2 -> stays 2
        (1, 1, 2),  # 2.12 -> 3, but at most max(1 + 1, 2 x 1) = 2 per decision
    ],
)
def test_headroom_adds_spare_replicas_while_there_is_demand(
    ready: int, running: int, expected: int
) -> None:
    decision, _ = decide(snap(0, ready, running=running), AutoscaleState(), DECODE, Role.decode)
    assert decision.desired == expected, decision.reason
    assert "headroom 2" in decision.reason


def test_headroom_does_not_keep_an_idle_pool_up() -> None:
    # no demand at all: the target is 0 (no headroom), the pool goes down to its min of 1
    spec = DECODE.model_copy(
        update={"scaling": DECODE.scaling.model_copy(update={"scale_down_delay_s": 0})}
    )
    decision, _ = decide(snap(0, 3), AutoscaleState(), spec, Role.decode)
    assert decision.desired == 2  # -1 per decision (max_scale_down_step) toward min 1
    assert "headroom" not in decision.reason
