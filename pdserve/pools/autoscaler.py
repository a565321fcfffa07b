"""The autoscaler loop: every pool's snapshot -> `decide` -> record -> scale, on each pool's
`scaling.interval_s`, and at once when the gateway signals demand for a pool with no replica
(requests held there start a replica without waiting for the interval). Demand signals do not
add samples for warm pools, so a flood of held requests cannot skew their windows.

The loop owns only the per-pool policy state. The pools (the gateway's PoolManager) own replicas,
draining and the actuator; they implement `PoolControl`. A scale-down that drains for a while
runs as its own task so it never delays another pool's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from pdserve.policies.autoscaling import AutoscaleState, decide
from pdserve.policies.types import ScaleDecision
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import Profile

log = logging.getLogger(__name__)


class PoolControl(Protocol):
    """What the autoscaler needs of the pools; the gateway's PoolManager implements it."""

    demand: asyncio.Event  # set by the gateway when a request is held or diverted at a cold pool

    def pool_names(self) -> list[str]: ...

    def snapshot(self, pool: str, now: float) -> PoolSnapshot: ...

    async def scale_to(self, decision: ScaleDecision) -> None: ...

    def record_decision(self, decision: ScaleDecision) -> None: ...


def _cold_with_requests(snapshot: PoolSnapshot) -> bool:
    """No replica, and requests held for it or prefilled elsewhere because it is cold."""
    return snapshot.current == 0 and snapshot.wanted > 0


class Autoscaler:
    """Decides every pool on its own `scaling.interval_s`, and a cold pool holding requests as
    soon as demand is signalled."""

    def __init__(
        self,
        pools: PoolControl,
        profile: Callable[[], Profile],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pools = pools
        self._profile = profile
        self._clock = clock
        self._states: dict[str, AutoscaleState] = {}
        self._next_due: dict[str, float] = {}
        self._scaling: dict[str, asyncio.Task[None]] = {}

    def state(self, pool: str) -> AutoscaleState:
        return self._states.get(pool, AutoscaleState.initial())

    async def run(self) -> None:
        """Decide forever; cancel the task to stop (in-flight scale calls are cancelled too)."""
        try:
            while True:
                await self.step(force=self._pools.demand.is_set())
                await self._sleep_until_due()
        finally:
            await self._cancel_scaling()

    async def step(self, force: bool = False) -> list[ScaleDecision]:
        """One pass: decide every pool that is due; with `force` (demand was signalled) also
        every pool holding requests at zero replicas, which must not wait for its interval."""
        if force:
            self._pools.demand.clear()
        now = self._clock()
        profile = self._profile()
        names = [name for name in self._pools.pool_names() if name in profile.pools]
        # a pool the current profile dropped is drained by the pools, not scaled here
        self._next_due = {name: due for name, due in self._next_due.items() if name in names}
        decisions = []
        for name in names:
            due = now >= self._next_due.get(name, -math.inf)
            if not (due or force):
                continue
            snapshot = self._snapshot(name, now)
            if snapshot is None or not (due or _cold_with_requests(snapshot)):
                continue
            if due:
                self._next_due[name] = now + profile.pools[name].scaling.interval_s
            decision = self._decide(snapshot, profile)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _snapshot(self, name: str, now: float) -> PoolSnapshot | None:
        try:
            return self._pools.snapshot(name, now)
        except Exception:
            log.exception("autoscaler: no snapshot of pool %s", name)
            return None

    def _decide(self, snapshot: PoolSnapshot, profile: Profile) -> ScaleDecision | None:
        name = snapshot.pool
        spec = profile.pools[name]
        try:
            decision, self._states[name] = decide(snapshot, self.state(name), spec, spec.role)
            self._pools.record_decision(decision)
        except Exception:
            log.exception("autoscaler: deciding pool %s failed", name)
            return None
        if decision.desired != decision.current:
            log.info(
                "scale %s %d -> %d: %s", name, decision.current, decision.desired, decision.reason
            )
            self._apply(decision)
        return decision

    def _apply(self, decision: ScaleDecision) -> None:
        running = self._scaling.get(decision.pool)
        if running is not None and not running.done():
            return  # the previous change (e.g. a drain) is still under way; decide again later
        self._scaling[decision.pool] = asyncio.create_task(
            self._scale(decision), name=f"pdserve-scale-{decision.pool}"
        )

    async def _scale(self, decision: ScaleDecision) -> None:
        try:
            await self._pools.scale_to(decision)
        except Exception:
            log.exception(
                "autoscaler: scaling pool %s to %d failed", decision.pool, decision.desired
            )

    async def wait_idle(self) -> None:
        """Wait for every scale call under way (tests and shutdown)."""
        pending = [task for task in self._scaling.values() if not task.done()]
        if pending:
            await asyncio.gather(*pending)

    async def _sleep_until_due(self) -> None:
        due = min(self._next_due.values(), default=self._clock() + 1.0)
        timeout = max(0.0, due - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pools.demand.wait(), timeout=max(timeout, 0.01))

    async def _cancel_scaling(self) -> None:
        tasks = [task for task in self._scaling.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
