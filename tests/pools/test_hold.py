"""The hold queue: sheds the lowest priority first, refuses when it has no room."""

from __future__ import annotations

import asyncio

import pytest

from pdserve.pools.hold import HoldQueue, Overloaded

pytestmark = pytest.mark.unit


async def test_hold_queue_sheds_lowest_priority_first() -> None:
    queue = HoldQueue(limit=2)
    low = queue.hold(priority=0, arrival=1, tokens=10)
    high = queue.hold(priority=5, arrival=2, tokens=20)
    assert queue.tokens == 30
    newcomer = queue.hold(priority=3, arrival=3, tokens=5)  # full: sheds `low` (priority 0 < 3)
    with pytest.raises(Overloaded):
        low.future.result()
    with pytest.raises(Overloaded):
        queue.hold(priority=3, arrival=4, tokens=1)  # lowest held is 3, not below 3: refused
    assert len(queue) == 2
    order: list[int] = []
    for held in (newcomer, high):
        held.future.add_done_callback(lambda _f, p=held.priority: order.append(p))
    queue.release_all()
    await asyncio.sleep(0)
    assert order == [5, 3]  # higher priority released first
    assert len(queue) == 0


def test_hold_queue_with_no_room_refuses() -> None:
    async def run() -> None:
        with pytest.raises(Overloaded):
            HoldQueue(limit=0).hold(priority=9, arrival=1, tokens=1)

    asyncio.run(run())
