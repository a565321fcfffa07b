"""A live profile switch as a pure plan: what happens to each pool, and why.

`plan_switch(pools, new)` reads plain observations of the current pools and the new profile
and returns typed steps, each with its reason. `pools.switch.ProfileSwitch` carries them out:
the `start` steps at once, the `finish` steps once `switch_ready` says every pool that starts
workers (added, adopted, or of a new worker spec) has a ready replica of its generation.
A pool whose spec is unchanged is carried over as it is, ready or not: it is not a need, so a
switch that changes only routing or scaling applies at once even while such a pool is down.
Nothing here does I/O or reads a clock.

A pool's generation is its worker-spec key (`pools.workerspec`): replicas of one generation
are interchangeable, so a pool whose key is unchanged is reused as it is, and a pool whose key
changed starts a new generation beside the old one, which drains when the switch completes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Profile


@dataclass(frozen=True)
class Generation:
    """The members of one pool launched with one worker spec (`key` None: unlabelled, which
    counts as every generation, as static endpoints do)."""

    key: str | None
    members: int  # alive and not draining
    ready: int  # of those, ready to serve


@dataclass(frozen=True)
class PoolObservation:
    name: str
    spec_key: str  # the generation that serves now
    retiring: bool = False  # dropped by an earlier switch, still draining
    generations: tuple[Generation, ...] = ()

    def members(self, key: str | None = None) -> int:
        return sum(g.members for g in self.generations if key is None or g.key in (key, None))

    def ready(self, key: str) -> int:
        return sum(g.ready for g in self.generations if g.key in (key, None))


# --- steps carried out when the switch begins --------------------------------------------


@dataclass(frozen=True)
class Reuse:
    """Keep the pool and its replicas; the new scaling and routing settings apply on finish."""

    pool: str
    reason: str


@dataclass(frozen=True)
class AddPool:
    """Create the pool and start its first replicas."""

    pool: str
    replicas: int
    reason: str


@dataclass(frozen=True)
class StartGeneration:
    """Start `replicas` workers of the new spec beside the pool's current members."""

    pool: str
    generation: str
    replicas: int
    reason: str


@dataclass(frozen=True)
class Adopt:
    """The pool is draining after an earlier switch dropped it: keep it, start `replicas`."""

    pool: str
    replicas: int
    reason: str


StartStep = Reuse | AddPool | StartGeneration | Adopt


# --- steps carried out when the switch completes -----------------------------------------


@dataclass(frozen=True)
class Drain:
    """Drain and stop the pool's members of every generation but `keep`."""

    pool: str
    keep: str
    reason: str


@dataclass(frozen=True)
class Drop:
    """The new profile has no such pool: wake its held requests, drain it, then remove it."""

    pool: str
    reason: str


FinishStep = Drain | Drop


@dataclass(frozen=True)
class Need:
    """A pool the new profile needs before it can serve: `replicas` > 0 of `generation`."""

    pool: str
    generation: str
    replicas: int


@dataclass(frozen=True)
class SwitchPlan:
    profile: str
    start: tuple[StartStep, ...]
    finish: tuple[FinishStep, ...]
    needs: tuple[Need, ...]

    def steps(self) -> tuple[StartStep | FinishStep, ...]:
        return (*self.start, *self.finish)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


def plan_switch(pools: Iterable[PoolObservation], new: Profile) -> SwitchPlan:
    """What to do with each pool to move from the observed pools to profile `new`."""
    current = {p.name: p for p in pools}
    start: list[StartStep] = []
    finish: list[FinishStep] = []
    needs: list[Need] = []
    for name, spec in new.pools.items():
        key, wanted = worker_spec_key(new, name), spec.replicas.start
        step = _start_step(current.get(name), name, key, wanted)
        start.append(step)
        if not isinstance(step, Reuse):
            # a reused pool serves the new profile exactly as it serves the old one, ready or
            # not: waiting for it would only hold the rest of the switch back
            needs.append(Need(name, key, wanted))
        drain = _drain_step(current.get(name), key)
        if drain is not None:
            finish.append(drain)
    for name, pool in current.items():
        if name not in new.pools and not pool.retiring:  # a retiring pool is dropped already
            reason = f"not in profile {new.name}: {_replicas(pool.members())} drain"
            finish.append(Drop(name, reason))
    return SwitchPlan(new.name, tuple(start), tuple(finish), tuple(needs))


def _start_step(pool: PoolObservation | None, name: str, key: str, wanted: int) -> StartStep:
    if pool is None:
        return AddPool(name, wanted, f"new pool: {_replicas(wanted)} of generation {key} start")
    if pool.retiring:
        reason = f"dropped by an earlier switch, still draining: {_replicas(wanted)} of {key} start"
        return Adopt(name, wanted, reason)
    if pool.spec_key != key:
        old = pool.members(pool.spec_key)
        reason = (
            f"worker spec changed ({pool.spec_key} -> {key}): {_replicas(wanted)} of {key} start "
            f"beside {old} of {pool.spec_key}"
        )
        return StartGeneration(name, key, wanted, reason)
    return Reuse(name, f"worker spec {key} unchanged: {_replicas(pool.members())} kept")


def _drain_step(pool: PoolObservation | None, key: str) -> Drain | None:
    """A pool that starts workers of a new spec drains the older generations on finish."""
    if pool is None or pool.spec_key == key:
        return None
    old = pool.members() - pool.members(key)
    reason = f"{_replicas(old)} of generation {pool.spec_key} drain once {key} serves"
    return Drain(pool.name, key, reason)


def switch_ready(pools: Iterable[PoolObservation], plan: SwitchPlan) -> Readiness:
    """The switch may finish once every pool that starts workers has a ready replica of its
    generation; pools reused as they are never hold it back."""
    current = {p.name: p for p in pools}
    if not plan.needs:
        return Readiness(True, f"no pool of {plan.profile} starts workers: it applies at once")
    for need in plan.needs:
        pool = current.get(need.pool)
        if pool is None:
            return Readiness(False, f"pool {need.pool} does not exist yet")
        if need.replicas > 0 and pool.ready(need.generation) == 0:
            reason = f"pool {need.pool} has no ready replica of generation {need.generation}"
            return Readiness(False, reason)
    return Readiness(True, f"every pool of {plan.profile} has a ready replica of its generation")


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"
