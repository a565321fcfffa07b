"""The hold queue of one pool: requests waiting for room on a replica, in release order.

Release order is `policies.admission.release_key`: higher priority first, FIFO within one, by
the request's arrival at the gateway (a request that is held again keeps its place). Bounded:
when full, a newcomer of higher priority sheds the lowest-priority (newest) held request,
otherwise the newcomer is refused. Both surface as `Overloaded` (HTTP 429).

A held request's future is resolved with the replica it was handed (already counted in flight
for it), or with None: wake up and plan again (a replica became ready, a switch dropped the
pool, the pool can no longer start a replica).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pdserve.policies.admission import release_key, release_order, shed_victim
from pdserve.pools.replica import Replica


class Overloaded(Exception):
    """The pool's hold queue is full of requests of at least this priority (HTTP 429)."""


class Refused(Overloaded):
    """The request cannot start within its deadline (HTTP 429, Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoReplica(Exception):
    """No replica could take the request within the hold timeout, or the pool cannot start
    one (HTTP 503)."""


class PoolDropped(NoReplica):
    """A live switch dropped the pool before the request could start on it: the request should
    follow the active profile instead (a 503 where nothing catches it)."""


@dataclass(eq=False)
class Held:
    priority: int
    arrival: int  # the request's arrival order at the gateway
    tokens: int
    future: asyncio.Future[Replica | None]
    affinity_key: str | None = None
    exclude: frozenset[str] = frozenset()
    # a long prompt held for local prefill: a replica of this (prefill) pool may take it instead
    prefill_pool: str | None = None
    order: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.order = release_key(self.priority, self.arrival)


class HoldQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: list[Held] = []
        self.tokens = 0  # prompt tokens held, kept as a sum: the snapshot reads it often

    def __len__(self) -> int:
        return len(self._held)

    def hold(
        self,
        priority: int,
        arrival: int,
        tokens: int,
        affinity_key: str | None = None,
        exclude: frozenset[str] = frozenset(),
        prefill_pool: str | None = None,
    ) -> Held:
        if len(self._held) >= self.limit:
            self._shed_for(priority)
        future: asyncio.Future[Replica | None] = asyncio.get_running_loop().create_future()
        held = Held(priority, arrival, tokens, future, affinity_key, exclude, prefill_pool)
        self._held.append(held)
        self.tokens += tokens
        return held

    def _shed_for(self, priority: int) -> None:
        victim = shed_victim(self._held, priority)
        if victim is None:
            raise Overloaded(f"{len(self._held)} requests held for this pool (limit {self.limit})")
        self.remove(victim)
        if not victim.future.done():
            victim.future.set_exception(Overloaded("shed for a higher-priority request"))

    def remove(self, held: Held) -> None:
        if held in self._held:
            self._held.remove(held)
            self.tokens -= held.tokens

    def in_order(self) -> list[Held]:
        """The held requests in release order (a copy)."""
        return release_order(self._held)

    def ahead_of(self, priority: int, arrival: int) -> bool:
        """Whether any held request leaves before one of this priority and arrival."""
        mine = release_key(priority, arrival)
        return any(h.order < mine for h in self._held)

    def count_ahead(self, priority: int, arrival: int) -> int:
        mine = release_key(priority, arrival)
        return sum(1 for h in self._held if h.order < mine)

    def hand(self, held: Held, replica: Replica | None) -> None:
        """Release one held request: with the replica it may use, or None to plan again."""
        self.remove(held)
        if not held.future.done():
            held.future.set_result(replica)

    def release_all(self) -> None:
        """Wake every held request to plan again, highest priority first."""
        for held in self.in_order():
            self.hand(held, None)
