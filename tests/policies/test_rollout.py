"""Rollouts: sticky clients that only ever move stable -> canary as the weight rises, unkeyed
requests split by the draw, scheduled steps, and the rollback bounds with their minimum."""

from __future__ import annotations

import random

import pytest

from pdserve.policies.rollout import (
    RollbackBounds,
    WindowFigures,
    choose_version,
    next_step,
    rollback_reason,
)

pytestmark = pytest.mark.unit

BOUNDS = RollbackBounds(min_requests=20, max_error_rate_delta=0.05, max_ttft_p99_ratio=1.5)


def test_a_client_keeps_its_version_and_a_rising_weight_only_moves_clients_to_canary() -> None:
    clients = [f"client-{i}" for i in range(2000)]
    previous = {c: choose_version(0.0, c, 0.0) for c in clients}
    assert set(previous.values()) == {"stable"}
    for percent in (5, 50, 100):
        now = {c: choose_version(percent, c, random.random()) for c in clients}
        assert all(not (previous[c] == "canary" and now[c] == "stable") for c in clients)
        share = sum(v == "canary" for v in now.values()) / len(clients)
        assert share == pytest.approx(percent / 100, abs=0.03)
        assert now == {c: choose_version(percent, c, 0.99) for c in clients}  # sticky
        previous = now


def test_without_a_key_the_draw_decides() -> None:
    assert choose_version(5, None, 0.049) == "canary"
    assert choose_version(5, None, 0.05) == "stable"


def test_steps_follow_the_schedule_when_due() -> None:
    assert next_step(5, [5, 50, 100], last_step_at=0, step_every_s=60, now=59) is None
    step = next_step(5, [5, 50, 100], last_step_at=0, step_every_s=60, now=60)
    assert step is not None and step.percent == 50
    assert next_step(100, [5, 50, 100], last_step_at=0, step_every_s=60, now=600) is None


def test_rollback_on_errors_or_ttft_only_past_the_minimum_of_requests() -> None:
    stable = WindowFigures(requests=100, errors=1, ttft_p99_s=0.2)
    failing = WindowFigures(requests=40, errors=10, ttft_p99_s=0.2)
    slow = WindowFigures(requests=40, errors=0, ttft_p99_s=0.31)
    fine = WindowFigures(requests=40, errors=2, ttft_p99_s=0.29)
    reason = rollback_reason(stable, failing, BOUNDS)
    assert reason is not None and "error rate 25.0%" in reason
    reason = rollback_reason(stable, slow, BOUNDS)
    assert reason is not None and "TTFT p99 310 ms" in reason
    assert rollback_reason(stable, fine, BOUNDS) is None
    few = WindowFigures(requests=19, errors=19, ttft_p99_s=9.0)
    assert rollback_reason(stable, few, BOUNDS) is None
