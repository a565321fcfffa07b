"""The small protocol every actuator implements (local processes, Ray, Kubernetes, static).

The pool manager asks an actuator what replicas exist and tells it how many there should be;
it never learns how. A test fake implements the same three methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ReplicaHandle:
    """A replica as its actuator sees it: an id, where it serves, and whether it still runs."""

    id: str
    pool: str
    url: str  # base URL of the worker, e.g. http://127.0.0.1:8101
    alive: bool = True  # process / actor / pod exists (readiness is probed separately)
    started_at: float = 0.0  # actuator clock (time.monotonic on local) when it was launched
    labels: dict[str, str] = field(default_factory=dict)


class Actuator(Protocol):
    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        """Every replica of the pool that exists now (starting, ready or draining)."""
        ...

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        """Make the pool `desired` replicas. When shrinking, remove `victims` (replica ids, already
        drained by the caller) first; when growing, start new ones. Returns without waiting for
        readiness."""
        ...

    async def close(self) -> None:
        """Stop everything this actuator started (local) or release clients (remote)."""
        ...
