"""Fixed worker endpoints from the profile (`actuator.static.endpoints`): no scaling.

For workers started elsewhere (by hand, by another orchestrator). Readiness is probed by the
pool manager like any other replica; `scale` only records what was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pdserve.actuators.base import ProfileFollower, ReplicaHandle
from pdserve.profile import Profile

log = logging.getLogger(__name__)


class StaticActuator(ProfileFollower):
    scales = False  # it cannot start a replica: a pool whose workers are all down is broken

    def __init__(self, profile: Callable[[], Profile]) -> None:
        super().__init__(profile)

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        urls = self._profile().actuator.static.endpoints.get(pool, [])
        return [ReplicaHandle(id=f"{pool}@{url}", pool=pool, url=url.rstrip("/")) for url in urls]

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        known = len(self._profile().actuator.static.endpoints.get(pool, []))
        if desired != known:
            log.info("static pool %s: asked for %d replicas, it has %d", pool, desired, known)

    async def close(self) -> None:
        return None
