"""The pool manager over an in-memory actuator: holds until ready, drains on scale-down, drops
a pool the profile no longer has."""

from __future__ import annotations

import asyncio

import pytest

from pdserve.policies.types import ScaleDecision
from pdserve.pools.manager import NoReplica, PoolDropped, PoolManager
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile

pytestmark = pytest.mark.unit


async def test_manager_holds_until_ready_and_drains_on_scale_down() -> None:
    profile = one_pool_profile()
    profile.gateway.queue_timeout_s = 5
    profile.pools["decode"].scaling.drain_timeout_s = 2
    actuator = MemoryActuator()
    probes = Probes()
    manager = PoolManager(profile, actuator, probes)
    await manager.start()
    try:
        assert manager.snapshot("decode", 0.0).starting == 1
        waiter = asyncio.create_task(manager.acquire("decode", prompt_tokens=7))
        await asyncio.sleep(0.05)
        assert manager.demand.is_set()
        assert manager.snapshot("decode", 0.0).queued_requests == 1
        probes.healthy = True
        replica = await asyncio.wait_for(waiter, 5)
        assert replica.inflight == 1
        assert manager.snapshot("decode", 0.0).queued_prompt_tokens == 7

        up = ScaleDecision("decode", 2, 1, "test: up")
        manager.record_decision(up)
        await manager.scale_to(up)
        await manager.refresh()
        assert manager.snapshot("decode", 0.0).ready == 2
        # scale down: the idle replica is the victim, the busy one keeps serving
        down = ScaleDecision("decode", 1, 2, "test: down")
        manager.record_decision(down)
        manager.record_decision(ScaleDecision("decode", 1, 1, "test: steady"))
        await manager.scale_to(down)
        assert [r.id for r in manager.pools["decode"].replicas.values()] == [replica.id]
        assert actuator.calls[-1][2] != [replica.id]
        pool = manager.pools["decode"]
        assert [d.reason for d in pool.decisions] == ["test: up", "test: down"]  # changes
        assert pool.last_decision is not None and pool.last_decision.reason == "test: steady"
        manager.release(replica, 7)
    finally:
        await manager.close()


async def test_manager_hold_times_out_as_no_replica() -> None:
    profile = one_pool_profile()
    profile.gateway.queue_timeout_s = 0.3
    manager = PoolManager(profile, MemoryActuator(), Probes())
    await manager.start()
    try:
        with pytest.raises(NoReplica):
            await manager.acquire("decode")
    finally:
        await manager.close()


async def test_a_pool_the_profile_no_longer_has_is_dropped_not_a_crash() -> None:
    manager = PoolManager(one_pool_profile(), MemoryActuator(), Probes())
    with pytest.raises(PoolDropped):  # a 503 where the caller does not re-plan
        await manager.acquire("prefill-of-an-older-profile")
    assert issubclass(PoolDropped, NoReplica)


async def test_a_removed_replicas_adapters_are_forgotten() -> None:
    """A replica scaled away leaves no residency behind: an id that comes back (a restarted pod)
    would otherwise be credited with adapters it no longer holds."""
    profile = one_pool_profile()
    profile.pools["decode"].scaling.drain_timeout_s = 1
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(profile, MemoryActuator(), probes)
    await manager.start()
    try:
        up = ScaleDecision("decode", 2, 1, "test: up")
        await manager.scale_to(up)
        await manager.refresh()
        ids = list(manager.pools["decode"].replicas)
        for rid in ids:
            manager.adapter_residency.of(rid, ["pirate"])
        await manager.scale_to(ScaleDecision("decode", 1, 2, "test: down"))
        [kept] = manager.pools["decode"].replicas
        assert manager.adapter_residency.holding("pirate") == {kept}
    finally:
        await manager.close()
