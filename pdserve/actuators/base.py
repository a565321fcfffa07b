"""The small protocol every actuator implements (local processes, Ray, Kubernetes, static).

The pool manager asks an actuator what replicas exist and tells it how many there should be;
it never learns how. A test fake implements the same three methods. `LaunchingActuator` is the
scale and close of the actuators that start each replica themselves (local, Ray): they launch and
stop one replica their own way.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pdserve.profile import Profile


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


class Member(Protocol):
    """A replica a launching actuator keeps: its id and when it was launched."""

    @property
    def id(self) -> str: ...

    @property
    def started_at(self) -> float: ...


M = TypeVar("M", bound=Member)


class ProfileFollower:
    """An actuator that reads the profile when it launches (local, Ray, static): built with the
    starting profile, it then reads the one `follow` hands it."""

    def __init__(self, profile: Callable[[], Profile]) -> None:
        self._profile = profile

    def follow(self, profile: Callable[[], Profile]) -> None:
        """Read the profile through `profile` from now on (the gateway passes the pool manager's
        launch profile, the pending one during a switch)."""
        self._profile = profile


class LaunchingActuator(ProfileFollower, abc.ABC, Generic[M]):
    """`scale` and the stopping half of `close` over the replicas an actuator launched itself,
    kept per pool by id; a subclass launches and stops one replica."""

    def __init__(self, profile: Callable[[], Profile]) -> None:
        super().__init__(profile)
        self._replicas: dict[str, dict[str, M]] = {}

    @abc.abstractmethod
    async def _launch(self, pool: str) -> M:
        """Start one replica of the pool (without waiting for it to be ready)."""

    @abc.abstractmethod
    async def _stop(self, replica: M) -> None:
        """Stop one replica and everything it started."""

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        """The victims first (together), then the newest while over `desired` (the oldest have
        warmed up longest), then new ones up to it."""
        members = self._replicas.setdefault(pool, {})
        await asyncio.gather(*(self._stop(members.pop(v)) for v in victims if v in members))
        while len(members) > desired:
            newest = max(members.values(), key=lambda r: r.started_at)
            await self._stop(members.pop(newest.id))
        while len(members) < desired:
            replica = await self._launch(pool)
            members[replica.id] = replica

    async def stop_all(self) -> None:
        """Stop every replica of every pool, together."""
        everything = [r for members in self._replicas.values() for r in members.values()]
        self._replicas.clear()
        await asyncio.gather(*(self._stop(r) for r in everything))
