"""The gateway's admission unit: per-replica capacity, the priority queue, late binding.

A replica takes at most its capacity of requests in flight (`policies.admission`); the rest wait
in their pool's hold queue. Route and replica are chosen when a request leaves the queue, with
what is true then: a held long prompt goes to the prefill pool if it has room by then, else
follows the route rule again. Room appearing is acted on at once: a request finishing hands its
slot to the head of the queue (no polling), a replica takes held requests as soon as its /health
answers, and a prefill replica with room takes long prompts held for local prefill. A prompt
the route rule would send to the prefill pool counts toward that pool's demand while it is held,
sent, or prefilled locally because the pool is cold, and a cold pool's first such prompt wakes
the autoscaler. A request is held only for a pool that is ready, starting or
can start (cold is not broken), and refused at once (429) when it cannot start in time.
The slots themselves (capacity, room, counting in and out) are pdserve.pools.slots'.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdserve.policies.admission import CapacityLimits, admission_decision, prompt_pool
from pdserve.policies.routing import decide_route
from pdserve.policies.types import Route, RouteCause
from pdserve.pools.hold import Held, NoReplica, Overloaded, PoolDropped, Refused
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica
from pdserve.pools.slots import Slots
from pdserve.profile import Profile, Role

if TYPE_CHECKING:
    from pdserve.pools.manager import PoolManager

SWITCHES_FOLLOWED = 3  # profile switches a waiting request follows before it gives up (503)

__all__ = ["Admission", "NoReplica", "Overloaded", "Placement", "PoolDropped", "Refused", "Ticket"]


@dataclass(eq=False)
class Ticket:
    """One request as admission sees it, from arrival until its prefill is over."""

    profile: Profile  # the profile it follows (the active one when it arrived, or after a switch)
    priority: int
    prompt_tokens: int
    uncached_tokens: int
    affinity_key: str | None
    arrival: int  # order of arrival at the gateway: FIFO within a priority
    start_by: float  # clock time by which it must start, else refused (429)
    hold_until: float  # clock time the hold timeout (queue_timeout_s) ends, else 503
    route: Route = "local"
    route_reason: str = ""
    route_cause: RouteCause | None = None  # None: the route rule was never asked (a short prompt)
    diverted: Pool | None = None  # the pool whose demand it counts toward while served elsewhere
    prefer: frozenset[str] = frozenset()  # replicas to try first (those holding its LoRA adapter)


@dataclass(frozen=True)
class Placement:
    route: Route
    pool: str
    replica: Replica  # counted in flight for the request: give it back with `release`


class Admission:
    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager
        self.slots = Slots(manager)
        self._arrivals = itertools.count()

    def ticket(
        self,
        profile: Profile,
        priority: int = 0,
        prompt_tokens: int = 0,
        uncached_tokens: int | None = None,
        affinity_key: str | None = None,
        deadline_s: float | None = None,
    ) -> Ticket:
        now, gateway = self.manager.clock(), profile.gateway
        deadline = deadline_s or gateway.start_deadline_s or gateway.queue_timeout_s
        return Ticket(
            profile,
            priority,
            prompt_tokens,
            prompt_tokens if uncached_tokens is None else uncached_tokens,
            affinity_key,
            next(self._arrivals),
            now + deadline,
            now + gateway.queue_timeout_s,
        )

    # --- a new request: route and replica, bound late -------------------------------------

    async def place(self, t: Ticket) -> Placement:
        """The route and a replica for a new request, chosen when it can start (raises
        `Refused`/`Overloaded` -> 429, `NoReplica` -> 503)."""
        held, local_only, switches = False, False, 0
        while True:
            try:
                route, pool = self._plan(t, held, local_only)
            except PoolDropped:
                switches += 1
                active = self.manager.profile.for_model(t.profile.model.name)
                if switches > SWITCHES_FOLLOWED or t.profile is active:
                    raise
                if active is None:
                    raise NoReplica(f"model {t.profile.model.name} is no longer served") from None
                t.profile = active  # the active profile's view of the request's model
                continue
            replica = self._take(pool, t)
            if replica is None:
                if not self.slots.can_hold(pool):  # broken, not cold: fail over, or fail now
                    if route == "local":
                        raise NoReplica(f"pool {pool.name} has no replica ready or startable")
                    t.route_reason = f"prefill pool {pool.name} cannot serve: prefill locally"
                    t.route_cause = "prefill_pool_down"
                    local_only = True
                    continue
                if not held:
                    self._refuse_if_late(pool, t)
                candidate = t.diverted.name if t.diverted is not None else None
                replica = await self._wait(pool, t, frozenset(), candidate)
                held = True
            if replica is not None:
                return self._placed(t, route, replica)

    def _plan(self, t: Ticket, held: bool, local_only: bool) -> tuple[Route, Pool]:
        """The route by the route rule (or, for a held long prompt, the prefill pool when it
        has room now) and the pool it starts on."""
        profile, pools = t.profile, self.manager.pools
        decode_name, prefill_name = profile.decode_pool, profile.prefill_pool
        for name in (decode_name, prefill_name):
            if name is not None and (name not in pools or pools[name].retiring):
                raise PoolDropped(f"pool {name} was dropped by a profile switch")
        wanted = prompt_pool(profile.routing, prefill_name, decode_name, t.uncached_tokens)
        t.route = "local"
        if wanted != decode_name:
            prefill = pools[wanted]
            if not local_only:
                t.route = self._route(t, prefill, held)
            if t.route == "disaggregated":
                self._undivert(t)
                return t.route, prefill
            self._divert(t, prefill)
        return t.route, pools[decode_name]

    def _route(self, t: Ticket, prefill: Pool, held: bool) -> Route:
        if held and self.slots.room(prefill, t.affinity_key, frozenset()) is not None:
            t.route_reason = "held long prompt: the prefill pool has room"
            t.route_cause = "held_prefill_room"
            return "disaggregated"
        snapshot = self.manager.routing_snapshot(t.profile, self.manager.clock())
        decision = decide_route(t.profile, t.uncached_tokens, snapshot)
        t.route_reason, t.route_cause = decision.reason, decision.cause
        return decision.route

    def _placed(self, t: Ticket, route: Route, replica: Replica) -> Placement:
        pool = replica.handle.pool
        if t.diverted is not None and pool == t.diverted.name:
            route = "disaggregated"  # handed a prefill replica while held for local prefill
            t.route_cause = "held_prefill_room"
            self._undivert(t)
        t.route = route
        t.start_by = math.inf  # it has started: a later hop waits only for the hold timeout
        return Placement(route, pool, replica)

    # --- one pool: a replica with room, or wait ---------------------------------------------

    async def acquire(self, pool_name: str, t: Ticket, exclude: frozenset[str]) -> Replica:
        """A replica of one pool with room (the decode hop), holding the request until one is."""
        if math.isinf(t.start_by):  # placed already: this later hop gets its own hold timeout
            t.hold_until = self.manager.clock() + t.profile.gateway.queue_timeout_s
        while True:
            pool = self.manager.pools.get(pool_name)
            if pool is None or pool.retiring:
                raise PoolDropped(f"pool {pool_name} is no longer part of the active profile")
            replica = self._take(pool, t, exclude)
            if replica is not None:
                return replica
            if not self.slots.can_hold(pool):
                raise NoReplica(f"pool {pool_name} has no replica ready, starting or startable")
            replica = await self._wait(pool, t, exclude, None)
            if replica is not None:
                return replica

    def _take(self, pool: Pool, t: Ticket, exclude: frozenset[str] = frozenset()) -> Replica | None:
        """A replica with room, unless requests held for the pool go first."""
        if len(pool.queue) and pool.queue.ahead_of(t.priority, t.arrival):
            return None
        replica = self._preferred_room(pool, t, exclude)
        if replica is not None:
            self.slots.count_in(pool, replica, t.prompt_tokens)
        return replica

    def _preferred_room(self, pool: Pool, t: Ticket, exclude: frozenset[str]) -> Replica | None:
        """A replica with room among those the ticket prefers, else among all."""
        if t.prefer:
            others = frozenset(r.id for r in pool.serving(exclude) if r.id not in t.prefer)
            replica = self.slots.room(pool, t.affinity_key, exclude | others)
            if replica is not None:
                return replica
        return self.slots.room(pool, t.affinity_key, exclude)

    async def _wait(
        self, pool: Pool, t: Ticket, exclude: frozenset[str], prefill_pool: str | None
    ) -> Replica | None:
        """Hold until handed a replica (returned) or woken to plan again (None)."""
        now = self.manager.clock()
        end = min(t.start_by, t.hold_until)
        if end <= now:
            raise self._expired(pool, t)
        held = pool.queue.hold(
            t.priority, t.arrival, t.prompt_tokens, t.affinity_key, exclude, prefill_pool
        )
        self.manager.demand.set()
        try:
            return await asyncio.wait_for(asyncio.shield(held.future), end - now)
        except TimeoutError:
            got = _handed(held)
            if got is not None:
                return got  # handed a replica as the timeout fired: use it
            raise self._expired(pool, t) from None
        except asyncio.CancelledError:
            got = _handed(held)
            if got is not None:
                self.release(got, t.prompt_tokens)
            raise
        finally:
            pool.queue.remove(held)

    def _expired(self, pool: Pool, t: Ticket) -> Exception:
        if t.start_by < t.hold_until:
            return Refused(f"pool {pool.name}: could not start within the request's deadline", 1)
        timeout = t.profile.gateway.queue_timeout_s
        return NoReplica(f"no ready replica in pool {pool.name} within {timeout:g} s")

    # --- handing out room -----------------------------------------------------------------

    def release(self, replica: Replica, prompt_tokens: int = 0) -> None:
        """The request on `replica` is over: its slot goes to the head of the queue at once."""
        pool = self.slots.count_out(replica, prompt_tokens)
        if pool is not None:
            self.hand_off(pool)

    def hand_off(self, pool: Pool) -> None:
        """Give the pool's room to its held requests in release order; a prefill pool's room
        left over goes to long prompts held for local prefill on the decode pool."""
        decode = None
        if pool.spec.role is Role.prefill and pool.name in self.manager.profile.pools:
            profile = self.manager.profile  # the decode pool of the prefill pool's model
            decode_name = profile.pool_for(Role.decode, profile.model_of(pool.name))
            decode = self.manager.pools.get(decode_name or "")
        spill = decode is not None and len(decode.queue) > 0
        if not len(pool.queue) and not spill:
            return
        limits = self.slots.limits(pool)
        for held in pool.queue.in_order():
            if not self._hand(pool, pool, held, limits):
                return
        if decode is None or not spill:
            return
        for held in decode.queue.in_order():
            if held.prefill_pool == pool.name and not self._hand(pool, decode, held, limits):
                break

    def _hand(self, pool: Pool, queue_of: Pool, held: Held, limits: CapacityLimits) -> bool:
        """Hand `held` a replica of `pool` if one has room; False when none has."""
        replica = self.slots.room(pool, held.affinity_key, held.exclude, limits)
        if replica is None:
            return bool(held.exclude)  # another may fit where this one's exclusions did not
        self.slots.count_in(pool, replica, held.tokens)
        queue_of.queue.hand(held, replica)
        return True

    # --- late, broken ---------------------------------------------------------------------

    def _refuse_if_late(self, pool: Pool, t: Ticket) -> None:
        now = self.manager.clock()
        outlook = self.slots.outlook(pool, pool.queue.count_ahead(t.priority, t.arrival), now)
        decision = admission_decision(outlook, t.start_by - now)
        if decision.action == "refuse":
            retry = decision.retry_after_s or 1.0
            raise Refused(f"pool {pool.name}: {decision.reason}", retry)

    def refreshed(self, pool: Pool) -> None:
        """After a refresh round (replicas may have become ready, KV headroom changed): the
        pool's room goes to held requests; a pool that can no longer start a replica wakes its
        held requests to fail over (local prefill) or fail."""
        if len(pool.queue) and not self.slots.can_hold(pool):
            pool.queue.release_all()
        elif pool.serving():
            self.hand_off(pool)

    # --- demand ----------------------------------------------------------------------------

    def _divert(self, t: Ticket, pool: Pool) -> None:
        """`t` is prefilled elsewhere (or held for that): it still counts toward `pool`."""
        if t.diverted is pool:
            return
        self._undivert(t)
        t.diverted = pool
        pool.divert(1, t.prompt_tokens)
        if not pool.members():
            self.manager.demand.set()  # a pool at zero wakes on its first prompt

    def _undivert(self, t: Ticket) -> None:
        if t.diverted is not None:
            t.diverted.divert(-1, -t.prompt_tokens)
            t.diverted = None

    def settle(self, t: Ticket) -> None:
        """The request's prefill is over (or it ended): it no longer counts as diverted."""
        self._undivert(t)


def _handed(held: Held) -> Replica | None:
    future = held.future
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None
