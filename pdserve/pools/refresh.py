"""The pool manager's refresh round: each replica's observations kept current.

Every `gateway.metrics_interval_s` one round syncs every pool with its actuator (new replicas
in, gone ones out), probes each replica's /health and /metrics (and /v1/models where the model
has adapters), notes startup times, lets admission release held requests to replicas that
became ready, replaces dead replicas and advances a live switch. A replica that leaves takes
what was known about it (prefix estimates, adapter residency) with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pdserve.pools.replica import Replica, ReplicaState, replica_state
from pdserve.pools.scraper import probe_adapters, probe_health, probe_metrics

if TYPE_CHECKING:
    from pdserve.pools.manager import PoolManager
    from pdserve.pools.pool import Pool

log = logging.getLogger(__name__)


class Refresh:
    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.manager.profile.gateway.metrics_interval_s)
            try:
                await self.round()
            except Exception:  # the loop must outlive one bad round
                log.exception("pool refresh failed")

    async def round(self) -> None:
        """Sync with the actuator, probe every replica, replace dead ones."""
        m = self.manager
        for pool in list(m.pools.values()):
            await self._sync(pool)
        probes = [self._probe(p, r) for p in m.pools.values() for r in p.replicas.values()]
        await asyncio.gather(*probes)
        now = m.clock()
        for pool in list(m.pools.values()):
            self._note_startups(pool, now)
            m.admission.refreshed(pool)
            await self._replace_dead(pool)
        m.kv_proof.tick(now)
        await m.switch.advance()

    def remove(self, pool: Pool, replica_id: str) -> None:
        """A replica gone: nothing it held (prefixes, adapters) is known any more; an id that
        comes back (a restarted pod) starts from what it lists."""
        pool.remove(replica_id)
        self.manager.adapter_residency.forget(replica_id)

    async def _probe(self, pool: Pool, replica: Replica) -> None:
        """/health, then /metrics; a replica that just became ready takes held requests at
        once, not after the rest of the round."""
        if not replica.alive:
            return
        was_ready = replica_state(replica) is ReplicaState.ready
        if await probe_health(self.manager.client, replica):
            if not was_ready and replica_state(replica) is ReplicaState.ready:
                self.manager.admission.refreshed(pool)
            await probe_metrics(self.manager.client, replica)
            await self._learn_adapters(pool, replica)

    async def _learn_adapters(self, pool: Pool, replica: Replica) -> None:
        """What a replica of a model with adapters holds, from its /v1/models (one more GET)."""
        profile = self.manager.profile
        if pool.name not in profile.pools or not profile.model_for(pool.name).adapters:
            return
        residency = self.manager.adapter_residency
        changes = residency.changes(replica.id)
        listed = await probe_adapters(self.manager.client, replica)
        if listed is not None:
            residency.learn(replica.id, listed, changes)

    async def _sync(self, pool: Pool) -> None:
        handles = {h.id: h for h in await self.manager.actuator.replicas(pool.name)}
        for replica_id, handle in handles.items():
            known = pool.replicas.get(replica_id)
            if known is None:
                pool.replicas[replica_id] = Replica(handle=handle, alive=handle.alive)
            else:
                known.handle = handle
                known.alive = handle.alive
        for replica_id in [rid for rid in pool.replicas if rid not in handles]:
            self.remove(pool, replica_id)

    def _note_startups(self, pool: Pool, now: float) -> None:
        on_startup = self.manager.on_startup
        for replica in pool.replicas.values():
            if replica.ever_healthy and replica.labels.get("startup") is None:
                replica.labels["startup"] = "seen"
                if replica.handle.started_at > 0:
                    pool.startup_s = max(0.0, now - replica.handle.started_at)
                    if on_startup is not None:
                        on_startup(pool.name, pool.startup_s)

    async def _replace_dead(self, pool: Pool) -> None:
        dead = [r for r in pool.replicas.values() if not r.alive and not r.draining]
        if not dead or pool.lock.locked():
            return
        async with pool.lock:
            log.warning("pool %s: replacing dead replicas %s", pool.name, [r.id for r in dead])
            size = len(pool.members()) + len(dead)
            await self.manager.actuator.scale(pool.name, size, [r.id for r in dead])
            for replica in dead:
                self.remove(pool, replica.id)
