"""A live profile switch, in three steps driven by the pool manager's refresh loop.

1. `begin(new)`: pools the new profile adds, and pools whose worker spec changed, start a new
   generation of workers beside the old; pools kept with the same spec are reused as they are.
2. While any pool that starts workers has no ready replica of its generation, requests keep
   following the old profile (no 503 while a new pool starts). Pools reused as they are do
   not count, ready or not: a switch that starts no workers takes effect at once.
3. Then the new profile becomes active: new requests follow it, in-flight ones finish where
   they started, and old-generation replicas and dropped pools are drained, then stopped.
   Requests still held for a dropped pool (none of its replicas was ready) are woken and
   follow the new profile: a prefill hop becomes a local prefill, a decode moves to the new
   profile's decode pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pdserve.pools.replica import ReplicaState, replica_state
from pdserve.pools.switch_plan import (
    AddPool,
    Adopt,
    Drain,
    Drop,
    FinishStep,
    Generation,
    PoolObservation,
    StartGeneration,
    StartStep,
    SwitchPlan,
    plan_switch,
    switch_ready,
)
from pdserve.pools.workerspec import SPEC_LABEL, worker_spec_key
from pdserve.profile import Profile

if TYPE_CHECKING:
    from pdserve.pools.manager import PoolManager
    from pdserve.pools.pool import Pool
    from pdserve.pools.replica import Replica

log = logging.getLogger(__name__)


class SwitchInProgress(Exception):
    """Another profile switch has not completed yet."""


def observe_pool(pool: Pool) -> PoolObservation:
    """What the switch plan sees of a pool: its members and ready replicas per generation."""
    members: dict[str | None, int] = defaultdict(int)
    ready: dict[str | None, int] = defaultdict(int)
    for replica in pool.replicas.values():
        key = replica.handle.labels.get(SPEC_LABEL)
        members[key] += int(replica.alive and not replica.draining)
        ready[key] += int(replica_state(replica) is ReplicaState.ready)
    generations = tuple(Generation(key, members[key], ready[key]) for key in members)
    return PoolObservation(pool.name, pool.spec_key, pool.retiring, generations)


class ProfileSwitch:
    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager
        self.pending: Profile | None = None
        self.plan: SwitchPlan | None = None
        self._drains: set[asyncio.Task[None]] = set()

    def observe(self) -> list[PoolObservation]:
        return [observe_pool(pool) for pool in self.manager.pools.values()]

    async def begin(self, new: Profile) -> None:
        if self.pending is not None:
            raise SwitchInProgress(f"switch to {self.pending.name} is still in progress")
        plan = plan_switch(self.observe(), new)
        for step in plan.steps():
            log.info(
                "switch to %s: %s %s: %s", new.name, type(step).__name__, step.pool, step.reason
            )
        self.pending, self.plan = new, plan
        for step in plan.start:
            self._start(new, step)
        await self.advance()

    def _start(self, new: Profile, step: StartStep) -> None:
        manager = self.manager
        if isinstance(step, AddPool):
            manager.pools[step.pool] = manager.new_pool(new, step.pool)
        pool = manager.pools[step.pool]
        if isinstance(step, Adopt):
            pool.retiring = False
            pool.desired = step.replicas
        if isinstance(step, AddPool | Adopt | StartGeneration):
            self._spawn(self._grow(pool, step.replicas))

    async def _grow(self, pool: Pool, extra: int) -> None:
        """Start `extra` replicas of the new generation beside the pool's current members
        (after any drain of the pool under way: the actuator takes one change at a time)."""
        async with pool.lock:
            await self.manager.actuator.scale(pool.name, len(pool.members()) + extra, [])

    async def advance(self) -> None:
        """Complete the switch once every pool the new profile needs can serve."""
        new, plan = self.pending, self.plan
        if new is None or plan is None:
            return
        readiness = switch_ready(self.observe(), plan)
        if not readiness.ready:
            return
        manager = self.manager
        for name, spec in new.pools.items():
            pool = manager.pools[name]
            pool.spec_key, pool.spec = worker_spec_key(new, name), spec
            pool.queue.limit = new.gateway.max_queued_per_pool
        for step in plan.finish:
            self._finish(new, step)
        manager.profile = new
        self.pending, self.plan = None, None
        log.info("profile %s is active: %s", new.name, readiness.reason)

    def _finish(self, new: Profile, step: FinishStep) -> None:
        pool = self.manager.pools.get(step.pool)
        if pool is None:
            return  # dropped by an earlier switch and removed since
        if isinstance(step, Drain):
            old = [r for r in pool.members() if not pool.of_generation(r, step.keep)]
            pool.desired = new.pools[step.pool].replicas.start
            self._spawn(self._retire(pool, old, len(pool.members()) - len(old)))
        elif isinstance(step, Drop) and not pool.retiring:
            pool.retiring = True
            pool.queue.release_all()  # held requests follow the new profile instead
            self._spawn(self._retire(pool, pool.members(), 0, drop=True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _retire(
        self, pool: Pool, victims: list[Replica], desired: int, drop: bool = False
    ) -> None:
        async with pool.lock:
            await self.manager.drain_and_remove(pool, victims, desired)
        # a later switch may have wanted the pool again while it drained (retiring cleared)
        if drop and pool.retiring and self.manager.pools.get(pool.name) is pool:
            del self.manager.pools[pool.name]

    async def cancel(self) -> None:
        for task in list(self._drains):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
