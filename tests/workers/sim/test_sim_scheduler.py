"""Invariants of the sim's continuous-batching scheduler over virtual KV blocks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdserve.workers.sim.scheduler import Scheduler, Sequence
from pdserve.workers.sim.timing import VLLM_CPU_TINY

pytestmark = pytest.mark.unit

SMALL = replace(VLLM_CPU_TINY, num_blocks=12, max_num_seqs=3, max_num_batched_tokens=256)

requests = st.lists(st.tuples(st.integers(1, 600), st.integers(1, 40)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(requests)
def test_every_sequence_finishes_within_limits(reqs: list[tuple[int, int]]) -> None:
    sched = Scheduler(SMALL)
    seqs = [Sequence(f"s{i}", p, m) for i, (p, m) in enumerate(reqs)]
    for seq in seqs:
        sched.add(seq)
    produced = {seq.id: 0 for seq in seqs}
    admitted_order: list[str] = []
    for _ in range(10_000):
        step = sched.schedule()
        if step is None:
            break
        admitted_order += [s.id for s in sched.running if s.id not in admitted_order]
        assert sched.used_blocks <= SMALL.num_blocks
        assert len(sched.running) <= SMALL.max_num_seqs
        assert step.prefill_tokens + len(step.decodes) <= SMALL.max_num_batched_tokens
        assert sched.duration(step) > 0
        for seq in sched.complete(step):
            produced[seq.id] += 1
            if seq.finished:
                sched.remove(seq.id)
    assert produced == {seq.id: seq.max_tokens for seq in seqs}
    assert sched.used_blocks == 0 and not sched.running and not sched.waiting
    assert admitted_order == [seq.id for seq in seqs]  # first come, first served


def test_blocks_are_reserved_for_prompt_plus_output() -> None:
    sched = Scheduler(SMALL)
    sched.add(Sequence("a", prompt_tokens=200, max_tokens=60))  # ceil(260 / 128) = 3 blocks
    sched.schedule()
    assert sched.used_blocks == 3
    assert sched.kv_usage == pytest.approx(3 / 12)


def test_the_head_waits_when_blocks_run_out() -> None:
    sched = Scheduler(SMALL)
    sched.hold(10)  # a prefill lease pins 10 of 12 blocks
    sched.add(Sequence("a", prompt_tokens=300, max_tokens=10))  # needs 3
    assert sched.schedule() is None
    assert len(sched.waiting) == 1
    sched.release(10)
    assert sched.schedule() is not None


def test_chunked_prefill_splits_a_long_prompt_across_steps() -> None:
    sched = Scheduler(SMALL)
    sched.add(Sequence("long", prompt_tokens=600, max_tokens=2))
    chunks = []
    while (step := sched.schedule()) is not None:
        chunks.append(step.prefill_tokens)
        for seq in sched.complete(step):
            if seq.finished:
                sched.remove(seq.id)
    assert chunks == [256, 256, 88, 0]  # 600 = 256 + 256 + 88, then one decode step


def test_remote_kv_leaves_only_the_last_position_to_compute() -> None:
    sched = Scheduler(SMALL)
    sched.add(Sequence("d", prompt_tokens=500, max_tokens=3, computed=499))
    step = sched.schedule()
    assert step is not None and step.prefill_tokens == 1
    assert [s.id for s in sched.complete(step)] == ["d"]
