"""The autoscaler loop against a small in-test PoolControl (a double of pdserve's own protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pdserve.policies.types import ScaleDecision
from pdserve.pools.autoscaler import Autoscaler, PoolControl
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import Profile, parse

pytestmark = pytest.mark.unit


def make_profile(interval_s: float = 1.0, prefill_interval_s: float | None = None) -> Profile:
    return parse(
        {
            "engine": {"kind": "sim"},
            "pools": {
                "prefill": {
                    "role": "prefill",
                    "replicas": {"min": 0, "max": 4},
                    "scaling": {"interval_s": prefill_interval_s or interval_s},
                },
                "decode": {
                    "role": "decode",
                    "replicas": {"min": 1, "max": 4},
                    "scaling": {"interval_s": interval_s, "target_concurrency": 4},
                },
            },
        },
        "test",
    )


@dataclass
class FakePools:
    """Pools whose replicas appear as soon as they are asked for (unless `gate` is closed)."""

    ready: dict[str, int]
    load: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    recorded: list[ScaleDecision] = field(default_factory=list)
    scaled: list[ScaleDecision] = field(default_factory=list)
    snapshots: list[tuple[str, float]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    demand: asyncio.Event = field(default_factory=asyncio.Event)

    def pool_names(self) -> list[str]:
        return list(self.ready)

    def snapshot(self, pool: str, now: float) -> PoolSnapshot:
        if pool in self.broken:
            raise RuntimeError(f"{pool} metrics unavailable")
        self.snapshots.append((pool, now))
        return PoolSnapshot(
            pool=pool,
            now=now,
            ready=self.ready[pool],
            starting=0,
            draining=0,
            queued_requests=self.queued.get(pool, 0),
            queued_prompt_tokens=1000 * self.queued.get(pool, 0),
            running=self.load.get(pool, 0),
            waiting=0,
            inflight=self.load.get(pool, 0),
            kv_usage_max=0.0,
        )

    async def scale_to(self, decision: ScaleDecision) -> None:
        self.scaled.append(decision)
        gate = self.gates.get(decision.pool)
        if gate is not None:
            await gate.wait()
        self.ready[decision.pool] = decision.desired

    def record_decision(self, decision: ScaleDecision) -> None:
        self.recorded.append(decision)


async def eventually(predicate: Callable[[], bool], timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {timeout_s} s")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fake_pools_satisfy_the_protocol() -> None:
    pools: PoolControl = FakePools(ready={"decode": 1})
    assert pools.pool_names() == ["decode"]


async def test_step_decides_records_and_scales_only_on_change() -> None:
    pools = FakePools(ready={"prefill": 1, "decode": 1}, load={"decode": 12})
    clock = Clock()
    scaler = Autoscaler(pools, lambda: make_profile(), clock)
    decisions = await scaler.step()
    await scaler.wait_idle()
    by_pool = {d.pool: d for d in decisions}
    # decode: 12 / 4 = 3.00, panic avg 3 >= 2 x 1 -> 3, rate max(1 + 1, 2 x 1) = 2
    assert by_pool["decode"].desired == 2
    # prefill: idle, but its 60 s scale-to-zero grace has not passed -> stays 1
    assert by_pool["prefill"].desired == 1
    assert [d.pool for d in pools.recorded] == ["prefill", "decode"]
    assert [d.pool for d in pools.scaled] == ["decode"]
    assert pools.ready["decode"] == 2
    assert all(d.at == 100.0 for d in decisions)


async def test_each_pool_keeps_its_own_interval() -> None:
    pools = FakePools(ready={"prefill": 1, "decode": 1})
    clock = Clock()
    scaler = Autoscaler(pools, lambda: make_profile(interval_s=1.0, prefill_interval_s=3.0), clock)
    for _ in range(7):
        await scaler.step()
        clock.now += 0.5
    times = {pool: [t for p, t in pools.snapshots if p == pool] for pool in ("prefill", "decode")}
    assert times["decode"] == [100.0, 101.0, 102.0, 103.0]  # every 1 s over 3 s
    assert times["prefill"] == [100.0, 103.0]  # every 3 s


async def test_state_carries_between_steps() -> None:
    pools = FakePools(ready={"decode": 4}, load={"decode": 0})
    clock = Clock()
    profile = make_profile()
    scaler = Autoscaler(pools, lambda: profile, clock)
    desired = []
    for _ in range(40):
        (decision,) = [d for d in await scaler.step() if d.pool == "decode"]
        await scaler.wait_idle()
        desired.append(decision.desired)
        clock.now += 1.0
    # idle: the first samples leave the 30 s stable window, then the 30 s down delay: the loop
    # remembers its window, so it holds 4 for a while and then steps down one at a time
    assert desired[0] == 4 and desired[-1] < 4
    assert desired == sorted(desired, reverse=True)
    assert len(scaler.state("decode").demand) == 30


async def test_demand_event_wakes_the_loop_at_once() -> None:
    pools = FakePools(ready={"prefill": 0, "decode": 1})
    scaler = Autoscaler(pools, lambda: make_profile(interval_s=60.0))
    task = asyncio.create_task(scaler.run())
    try:
        await eventually(lambda: len(pools.recorded) >= 2, timeout_s=5)
        assert pools.ready["prefill"] == 0
        pools.queued["prefill"] = 1
        pools.demand.set()
        await eventually(lambda: pools.ready["prefill"] == 1, timeout_s=2)  # << 60 s interval
        (wake,) = pools.scaled
        assert wake.pool == "prefill" and wake.current == 0 and wake.desired == 1
        assert "held" in wake.reason
        assert not pools.demand.is_set()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_slow_scale_of_one_pool_does_not_block_another() -> None:
    gate = asyncio.Event()
    pools = FakePools(
        ready={"prefill": 4, "decode": 1}, load={"decode": 12}, gates={"prefill": gate}
    )
    profile = make_profile()
    profile.pools["prefill"].replicas.max = 2  # 4 > max 2: prefill must shrink (a slow drain)
    clock = Clock()
    scaler = Autoscaler(pools, lambda: profile, clock)
    await scaler.step()
    await asyncio.sleep(0)
    clock.now += 1.0
    await scaler.step()
    await asyncio.sleep(0)
    # prefill's drain is still under way: one scale call for it, none re-issued meanwhile
    assert [d.pool for d in pools.scaled].count("prefill") == 1
    # decode went on meanwhile: 12 / 4 = 3.00 -> 2 (rate from 1), then 3
    assert pools.ready["decode"] == 3
    gate.set()
    await scaler.wait_idle()
    assert pools.ready["prefill"] == 2


async def test_dropped_pools_and_failing_snapshots_are_skipped() -> None:
    pools = FakePools(ready={"prefill": 1, "decode": 1, "old": 2}, broken={"prefill"})
    scaler = Autoscaler(pools, lambda: make_profile(), Clock())
    decisions = await scaler.step()
    assert [d.pool for d in decisions] == ["decode"]
    assert [p for p, _ in pools.snapshots] == ["decode"]


async def test_forced_pass_decides_only_cold_pools_with_held_requests() -> None:
    pools = FakePools(ready={"prefill": 0, "decode": 1}, load={"decode": 3})
    clock = Clock()
    scaler = Autoscaler(pools, lambda: make_profile(interval_s=10.0), clock)
    await scaler.step()  # both due at start
    clock.now += 1.0
    assert await scaler.step(force=True) == []  # nothing held: no extra samples anywhere
    pools.queued["prefill"] = 3
    clock.now += 1.0
    (decision,) = await scaler.step(force=True)
    await scaler.wait_idle()
    assert (decision.pool, decision.current, decision.desired) == ("prefill", 0, 1)
    assert len(scaler.state("decode").demand) == 1  # decode still decided only once
