"""The hold queue of one pool: requests waiting for a ready replica, ordered by priority.

Bounded: when full, a newcomer of higher priority sheds the lowest-priority (newest) held
request, otherwise the newcomer is refused. Both surface as `Overloaded` (HTTP 429).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field


class Overloaded(Exception):
    """The pool's hold queue is full of requests of at least this priority."""


@dataclass(order=True)
class Held:
    order: tuple[int, int]  # (-priority, arrival): higher priority first, then FIFO
    tokens: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)

    @property
    def priority(self) -> int:
        return -self.order[0]


class HoldQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: list[Held] = []
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    @property
    def tokens(self) -> int:
        return sum(h.tokens for h in self._held)

    def hold(self, priority: int, tokens: int) -> Held:
        if len(self._held) >= self.limit:
            self._shed_for(priority)
        held = Held(
            (-priority, next(self._arrivals)), tokens, asyncio.get_running_loop().create_future()
        )
        self._held.append(held)
        return held

    def _shed_for(self, priority: int) -> None:
        if not self._held:
            raise Overloaded("no room to hold requests for this pool")
        lowest = max(self._held)  # lowest priority, newest arrival
        if lowest.priority >= priority:
            raise Overloaded(f"{len(self._held)} requests held for this pool (limit {self.limit})")
        self._held.remove(lowest)
        if not lowest.future.done():
            lowest.future.set_exception(Overloaded("shed for a higher-priority request"))

    def remove(self, held: Held) -> None:
        if held in self._held:
            self._held.remove(held)

    def release_all(self) -> None:
        """Wake every held request, highest priority first."""
        for held in sorted(self._held):
            if not held.future.done():
                held.future.set_result(None)
        self._held.clear()
