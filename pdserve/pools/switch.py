"""A live profile switch, in three steps driven by the pool manager's refresh loop.

1. `begin(new)`: pools the new profile adds, and pools whose worker spec changed, start a new
   generation of workers beside the old; pools kept with the same spec are reused as they are.
2. While any pool the new profile needs has no ready replica of its generation, requests keep
   following the old profile (no 503 while a new pool starts).
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
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Profile

if TYPE_CHECKING:
    from pdserve.pools.manager import PoolManager
    from pdserve.pools.pool import Pool
    from pdserve.pools.replica import Replica

log = logging.getLogger(__name__)


class SwitchInProgress(Exception):
    """Another profile switch has not completed yet."""


class ProfileSwitch:
    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager
        self.pending: Profile | None = None
        self._drains: set[asyncio.Task[None]] = set()

    async def begin(self, new: Profile) -> None:
        if self.pending is not None:
            raise SwitchInProgress(f"switch to {self.pending.name} is still in progress")
        manager = self.manager
        self.pending = new
        for name, spec in new.pools.items():
            pool = manager.pools.get(name)
            if pool is None:
                pool = manager.new_pool(new, name)
                manager.pools[name] = pool
                self._spawn(self._grow(pool, spec.replicas.start))
            elif pool.retiring:  # dropped by the last switch, still draining: wanted again
                pool.retiring = False
                pool.desired = spec.replicas.start
                self._spawn(self._grow(pool, spec.replicas.start))
            elif pool.spec_key != worker_spec_key(new, name):
                self._spawn(self._grow(pool, spec.replicas.start))
        await self.advance()

    async def _grow(self, pool: Pool, extra: int) -> None:
        """Start `extra` replicas of the new generation beside the pool's current members
        (after any drain of the pool under way: the actuator takes one change at a time)."""
        async with pool.lock:
            await self.manager.actuator.scale(pool.name, len(pool.members()) + extra, [])

    def _ready(self, new: Profile) -> bool:
        for name, spec in new.pools.items():
            pool = self.manager.pools.get(name)
            if pool is None:
                return False
            key = worker_spec_key(new, name)
            wanted = spec.replicas.start
            ready = [
                r
                for r in pool.replicas.values()
                if pool.of_generation(r, key) and r.healthy and r.alive and not r.draining
            ]
            if wanted > 0 and not ready:
                return False
        return True

    async def advance(self) -> None:
        """Complete the switch once every pool the new profile needs can serve."""
        new = self.pending
        if new is None or not self._ready(new):
            return
        manager = self.manager
        for name, spec in new.pools.items():
            pool = manager.pools[name]
            old_key, pool.spec_key, pool.spec = pool.spec_key, worker_spec_key(new, name), spec
            pool.queue.limit = new.gateway.max_queued_per_pool
            if old_key != pool.spec_key:
                old = [r for r in pool.members() if not pool.of_generation(r)]
                pool.desired = spec.replicas.start
                self._spawn(self._retire(pool, old, len(pool.members()) - len(old)))
        for name in [n for n in manager.pools if n not in new.pools]:
            pool = manager.pools[name]
            if not pool.retiring:
                pool.retiring = True
                pool.queue.release_all()  # held requests follow the new profile instead
                self._spawn(self._retire(pool, pool.members(), 0, drop=True))
        manager.profile = new
        self.pending = None
        log.info("profile %s is active", new.name)

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
