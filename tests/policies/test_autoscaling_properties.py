"""Invariants of the limits wrapper over random load sequences (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdserve.policies.autoscaling import AutoscaleState, decide
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Replicas, Role, ScalingSpec

pytestmark = pytest.mark.unit

loads = st.lists(
    st.tuples(
        st.integers(0, 200),  # running
        st.integers(0, 20),  # queued at the gateway
        st.integers(0, 200_000),  # queued prompt tokens
        st.floats(0, 1),  # kv usage
        st.sampled_from([0.0, 0.25, 1.0, 3.0]),  # seconds to the next decision
    ),
    min_size=1,
    max_size=60,
)
specs = st.builds(
    lambda low, extra, rate, step, delay, role: PoolSpec(
        role=role,
        replicas=Replicas(min=low, max=low + extra),
        scaling=ScalingSpec(
            target_concurrency=4,
            stable_window_s=10,
            panic_window_s=2,
            max_scale_up_rate=rate,
            max_scale_down_step=step,
            scale_down_delay_s=delay,
            scale_to_zero_grace_s=5,
        ),
    ),
    st.integers(0, 3),
    st.integers(1, 8),
    st.sampled_from([1.0, 1.5, 2.0, 4.0]),
    st.integers(1, 3),
    st.sampled_from([0.0, 2.0, 5.0]),
    st.sampled_from([Role.decode, Role.prefill]),
)


@settings(max_examples=300, deadline=None)
@given(spec=specs, sequence=loads, start=st.integers(0, 12))
def test_decisions_respect_every_limit(
    spec: PoolSpec, sequence: list[tuple[int, int, int, float, float]], start: int
) -> None:
    state, now, current = AutoscaleState.initial(), 0.0, start
    low, high, scaling = spec.replicas.min, spec.replicas.max, spec.scaling
    for running, queued, tokens, kv, gap in sequence:
        snapshot = PoolSnapshot(
            pool="p",
            now=now,
            ready=current,
            starting=0,
            draining=0,
            queued_requests=queued,
            queued_prompt_tokens=tokens,
            running=running,
            waiting=0,
            inflight=running,
            kv_usage_max=kv,
        )
        decision, new_state = decide(snapshot, state, spec, spec.role)
        assert decide(snapshot, state, spec, spec.role) == (decision, new_state)  # pure
        desired = decision.desired
        assert low <= desired <= high
        assert decision.reason.endswith(f"desired {desired} (current {current})")
        if desired > max(current, low):
            assert desired <= max(current + 1, math.ceil(current * scaling.max_scale_up_rate))
        if desired < min(current, high):
            assert not decision.panic  # never down while panicking
            assert desired >= current - scaling.max_scale_down_step
        if current == 0 and queued:
            assert desired >= 1  # held requests start a replica at once
        state, current, now = new_state, desired, now + gap
