"""The refresh round over an in-memory actuator: a replica the actuator no longer lists leaves
with what was known of it; a dead one is replaced and forgotten."""

from __future__ import annotations

import dataclasses

import pytest

from pdserve.pools.manager import PoolManager
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile

pytestmark = pytest.mark.unit


async def _started(actuator: MemoryActuator) -> PoolManager:
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(one_pool_profile(), actuator, probes)
    await manager.start()
    return manager


async def test_a_replica_the_actuator_no_longer_lists_leaves_with_its_adapters() -> None:
    actuator = MemoryActuator()
    manager = await _started(actuator)
    try:
        [gone] = manager.pools["decode"].replicas
        manager.adapter_residency.of(gone, ["pirate"])
        actuator.handles["decode"] = []  # e.g. its pod deleted by someone else
        await manager.refresh()
        assert gone not in manager.pools["decode"].replicas
        assert manager.adapter_residency.holding("pirate") == set()
    finally:
        await manager.close()


async def test_a_dead_replica_is_replaced_and_forgotten() -> None:
    actuator = MemoryActuator()
    manager = await _started(actuator)
    try:
        [dead] = manager.pools["decode"].replicas
        manager.adapter_residency.of(dead, ["pirate"])
        [handle] = actuator.handles["decode"]
        actuator.handles["decode"] = [dataclasses.replace(handle, alive=False)]
        await manager.refresh()
        assert actuator.calls[-1] == ("decode", 1, [dead])  # the same size, the dead one out
        assert list(manager.pools["decode"].replicas) != [dead]
        assert manager.adapter_residency.holding("pirate") == set()
    finally:
        await manager.close()
