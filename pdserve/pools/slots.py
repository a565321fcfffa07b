"""Per-replica slot accounting: how many requests each replica of a pool may take, which replica
has room, the counting in and out of requests in flight, and whether and when a pool can add
capacity (a replica starting, one ejected and not probed since, one the actuator can start).

The arithmetic is `policies.admission`'s; this is the state it reads, the pools' replicas. The
admission unit (pdserve.pools.admission) holds and hands out requests on top of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdserve.policies.admission import (
    CapacityLimits,
    StartOutlook,
    can_hold,
    choose_with_room,
    replica_capacity,
    target_binds,
)
from pdserve.policies.types import ReplicaLoad
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica, ReplicaState, replica_state

if TYPE_CHECKING:
    from pdserve.pools.manager import PoolManager


class Slots:
    """The pools' in-flight slots, counted on their replicas."""

    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager

    def limits(self, pool: Pool) -> CapacityLimits:
        spec = pool.spec
        ready, starting = _ready_starting(pool)
        binds = spec.admission.target_binds and target_binds(
            ready, starting, spec.replicas.max, self._scales()
        )
        return CapacityLimits(
            # the pool's own engine.max_num_seqs, else the profile's (Profile.engine_for)
            max_num_seqs=spec.engine.max_num_seqs or self.manager.profile.engine.max_num_seqs,
            target=spec.scaling.target_concurrency if binds else None,
            cap=spec.admission.max_inflight_per_replica,
            kv_high_watermark=spec.scaling.kv_high_watermark,
        )

    def room(
        self,
        pool: Pool,
        affinity_key: str | None,
        exclude: frozenset[str],
        limits: CapacityLimits | None = None,
    ) -> Replica | None:
        """The replica the pool's picker chooses among those with room, or None."""
        candidates = pool.serving(exclude)
        if not candidates:
            return None
        routing = self.manager.profile.routing
        chosen, pool.picker_state = choose_with_room(
            routing.picker,
            [r.load() for r in candidates],
            limits or self.limits(pool),
            pool.picker_state,
            affinity_key,
            routing.prefix_affinity_load_cap,
        )
        return next((r for r in candidates if r.id == chosen), None)

    def count_in(self, pool: Pool, replica: Replica, tokens: int) -> None:
        now = self.manager.clock()
        if replica.inflight == 0:
            replica.busy_since = now
        replica.inflight += 1
        replica.inflight_prompt_tokens += tokens
        pool.service.change(+1, now)

    def count_out(self, replica: Replica, tokens: int) -> Pool | None:
        """The request on `replica` is over; the replica's pool (None: dropped since)."""
        replica.inflight = max(0, replica.inflight - 1)
        replica.inflight_prompt_tokens = max(0, replica.inflight_prompt_tokens - tokens)
        pool = self.manager.pools.get(replica.handle.pool)
        if pool is not None:
            pool.service.change(-1, self.manager.clock())
        return pool

    # --- cold, broken, late ---------------------------------------------------------------

    def _scales(self) -> bool:
        """Whether the actuator can start replicas (static endpoints cannot)."""
        return bool(getattr(self.manager.actuator, "scales", True))

    def startable(self, pool: Pool) -> int:
        if not self._scales():
            return 0
        return max(0, pool.spec.replicas.max - len(pool.members()))

    def can_hold(self, pool: Pool) -> bool:
        """Cold, not broken. A replica ejected by a failed request and not probed since counts
        as starting: until the next refresh round says otherwise it may be a worker that died
        and is being replaced (a request must not get a 503 in that gap)."""
        ready, starting = _ready_starting(pool)
        return can_hold(ready, starting + len(_unconfirmed(pool)), self.startable(pool))

    def outlook(self, pool: Pool, ahead: int, now: float) -> StartOutlook:
        """When a request with `ahead` requests held before it could start: the free slots,
        the pool's release rate, and the capacity arriving (and when)."""
        limits = self.limits(pool)
        free = sum(
            max(0, replica_capacity(r.load(), limits).slots - r.inflight) for r in pool.serving()
        )
        per_replica = replica_capacity(ReplicaLoad(id=""), limits).slots
        startup = pool.startup_s
        arrivals = [
            (_eta(r, startup, now), per_replica)
            for r in pool.replicas.values()
            if replica_state(r) is ReplicaState.starting
        ]
        # an ejected replica not probed since may be a dead worker about to be replaced: it
        # comes back (or its replacement does) in about one start-up, as `can_hold` assumes
        arrivals += [(startup or 0.0, per_replica) for _ in _unconfirmed(pool)]
        startable = self.startable(pool)
        if startable:
            arrivals.append((startup or 0.0, per_replica * startable))
        return StartOutlook(ahead, free, pool.service.releases_per_s(), tuple(arrivals))


def _unconfirmed(pool: Pool) -> list[Replica]:
    """Members ejected by a failed request and not probed since."""
    return [r for r in pool.members() if r.unconfirmed and not r.healthy]


def _ready_starting(pool: Pool) -> tuple[int, int]:
    states = [replica_state(r) for r in pool.replicas.values()]
    return states.count(ReplicaState.ready), states.count(ReplicaState.starting)


def _eta(replica: Replica, startup_s: float | None, now: float) -> float:
    """Seconds until a starting replica is expected ready; 0 when no startup was measured."""
    if startup_s is None:
        return 0.0
    started = replica.handle.started_at
    return max(0.0, started + startup_s - now) if started > 0 else startup_s
