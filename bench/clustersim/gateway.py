"""The simulated gateway: route, admission, the hold queues and late binding, with pdserve's own
functions (`decide_route`, `pick`, and `pdserve.policies.admission`'s capacity, release order,
demand accounting, cold-vs-broken and early refusal), as `pdserve/pools/admission.py` runs them.

With `SimConfig.late_binding` (the gateway since issue 18): a replica takes at most its capacity
in flight (`replica_capacity`: the engine's batch, its KV headroom, the pool's target while the
pool can grow); the rest wait in the pool's queue in `release_key` order; route and replica are
chosen when a request leaves the queue; a long prompt prefilled locally (or held for that)
counts toward the prefill pool's demand (`demand_pool`); a request that cannot start within its
deadline is refused at once (`admission_decision`). Without it: the gateway before issue 18,
which held a request only while its pool had no ready replica and kept its route.

As in the gateway, a request whose prefill is done waits for its decode slot until
`queue_timeout_s`, not its start deadline (it has started).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pdserve.policies.admission import (
    CapacityLimits,
    StartOutlook,
    admission_decision,
    can_hold,
    choose_with_room,
    demand_pool,
    release_key,
    release_order,
    replica_capacity,
    shed_victim,
    target_binds,
)
from pdserve.policies.picking import pick
from pdserve.policies.routing import decide_route
from pdserve.policies.types import ReplicaLoad, Route
from pdserve.profile import Role

if TYPE_CHECKING:
    from bench.clustersim.config import PoolState
    from bench.clustersim.events import Cluster


@dataclass(eq=False)
class Ticket:
    """One request from arrival until it has a decode slot (`policies.admission.Queued`)."""

    idx: int
    priority: int
    arrival: int
    start_by: float  # refused (429) if it cannot start by then
    hold_until: float  # held past this: 503
    local: bool = True  # needs its prompt prefilled where it decodes
    hop: bool = False  # its KV is on a decode replica's doorstep: waiting for a decode slot
    held_in: str | None = None  # the pool whose queue holds it
    hold_seq: int = -1  # which of its holds is the current one


class HeldQueue:
    """Held requests in `release_key` order: a heap whose entries are live while the ticket is
    still held here under the same hold (stale ones are skipped, never searched for)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.heap: list[tuple[tuple[int, int], int, Ticket]] = []
        self.count = 0
        self.tokens = 0
        self.by_priority: dict[int, int] = {}  # held requests per priority

    def ahead_of_newest(self, priority: int) -> int:
        """`policies.admission.ahead_of` for a request that arrived after every held one: all
        held of its priority or higher. Kept as counts: scanning the queue on every arrival was
        70% of a burst's run time."""
        return sum(n for p, n in self.by_priority.items() if p >= priority)

    def push(self, t: Ticket) -> None:
        heapq.heappush(self.heap, (release_key(t.priority, t.arrival), t.hold_seq, t))

    def _live(self, seq: int, t: Ticket) -> bool:
        return t.held_in == self.name and t.hold_seq == seq

    def head(self) -> Ticket | None:
        heap = self.heap
        while heap and not self._live(heap[0][1], heap[0][2]):
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def live(self) -> Iterator[Ticket]:
        return (t for _, seq, t in self.heap if self._live(seq, t))


class SimGateway:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.profile = cluster.profile
        gateway = self.profile.gateway
        self.deadline_s = gateway.start_deadline_s or gateway.queue_timeout_s
        self.timeout_s = gateway.queue_timeout_s
        self.queues = {name: HeldQueue(name) for name in cluster.pools}
        # long prompts held on the decode pool for local prefill, meant for the prefill pool
        self.diverted_held = HeldQueue(cluster.decode.name)
        self.holds = itertools.count()

    # -- arrivals ------------------------------------------------------------------------------
    def arrive(self, now: float, idx: int) -> None:
        t = Ticket(idx, 0, idx, now + self.deadline_s, now + self.timeout_s)
        if self.c.config.late_binding:
            self.place(now, t, held=False)
        else:
            self._place_at_once(now, t)

    def place(self, now: float, t: Ticket, held: bool) -> None:
        """Route and replica for `t` now; else refuse it if it is late, else hold it."""
        if t.hop:
            self._decode_hop(now, t)
            return
        route = self._route(now, t, held)
        pool = self._pool_for(route)
        if not held:
            pool.arrivals += 1  # the QPS rule's signal: requests routed to the pool
        if not self._can_hold(pool):
            self.c.drop(t.idx, "503 no replica ready, starting or startable")
            return
        replica = self._take(now, pool, t)
        if replica is not None:
            self._start(now, pool, replica, t)
        elif held or not self._late(now, pool, t):
            self._hold(now, pool, t)
        else:
            self.c.drop(t.idx, "429 cannot start within its deadline")

    def _route(self, now: float, t: Ticket, held: bool) -> Route:
        c, prompt = self.c, self.c.prompt[t.idx]
        prefill = c.prefill
        if prefill is None or demand_pool(self.profile, prompt) != prefill.name:
            t.local = True
            return "local"
        if held and self._room(now, prefill) is not None:
            route: Route = "disaggregated"  # held long prompt: the prefill pool has room now
        else:
            route = decide_route(self.profile, prompt, c.routing_snapshot(now)).route
        if route == "disaggregated" and not self._can_hold(prefill):
            route = "local"  # the prefill pool cannot serve: fail over to local prefill
        t.local = route == "local"
        c.ledger.divert(t.idx, prompt, t.local)
        return route

    def _decode_hop(self, now: float, t: Ticket) -> None:
        decode = self.c.decode
        replica = self._take(now, decode, t)
        if replica is not None:
            self._start(now, decode, replica, t)
        else:
            self._hold(now, decode, t)

    def kv_arrived(self, now: float, t: Ticket) -> None:
        t.hop, t.local = True, False
        if self.c.config.late_binding:
            self._decode_hop(now, t)
        else:
            self._send_at_once(now, self.c.decode, t)

    # -- capacity ------------------------------------------------------------------------------
    def limits(self, pool: PoolState) -> CapacityLimits:
        spec = pool.spec
        binds = spec.admission.target_binds and target_binds(
            len(pool.ready), len(pool.starting), spec.replicas.max, self.c.scales
        )
        return CapacityLimits(
            max_num_seqs=spec.engine.max_num_seqs or self.profile.engine.max_num_seqs,
            target=spec.scaling.target_concurrency if binds else None,
            cap=spec.admission.max_inflight_per_replica,
            kv_high_watermark=spec.scaling.kv_high_watermark,
        )

    def _room(self, now: float, pool: PoolState, limits: CapacityLimits | None = None) -> Any:
        """A ready replica with room (the picker's choice among those with room), or None."""
        limits = limits or self.limits(pool)
        routing = self.profile.routing
        for candidates in self.c.candidates(pool):
            loads = [self.c.load(pool, r, now) for r in candidates]
            chosen, pool.picker = choose_with_room(
                routing.picker, loads, limits, pool.picker, None, routing.prefix_affinity_load_cap
            )
            if chosen is not None:
                return next(r for r in candidates if r.life.id == chosen)
        return None

    def _take(self, now: float, pool: PoolState, t: Ticket) -> Any:
        """A replica with room, unless requests held for the pool go first."""
        head = self.queues[pool.name].head()
        if head is not None and release_key(head.priority, head.arrival) < release_key(
            t.priority, t.arrival
        ):
            return None
        return self._room(now, pool)

    def _can_hold(self, pool: PoolState) -> bool:
        startable = pool.spec.replicas.max - len(pool.ready) - len(pool.starting)
        return can_hold(len(pool.ready), len(pool.starting), startable if self.c.scales else 0)

    def _late(self, now: float, pool: PoolState, t: Ticket) -> bool:
        """Early refusal: `t` cannot start within its deadline, given the queue ahead of it,
        the room now, the slots finishing requests free and the replicas coming."""
        limits = self.limits(pool)
        free = 0
        for replica in pool.ready:
            load = self.c.load(pool, replica, now)
            free += max(0, replica_capacity(load, limits).slots - load.inflight)
        per_replica = replica_capacity(ReplicaLoad(id=""), limits).slots
        startup = pool.startup_s
        arrivals = [
            (max(0.0, r.life.launched_at + startup - now) if startup else 0.0, per_replica)
            for r in pool.starting
        ]
        startable = pool.spec.replicas.max - len(pool.ready) - len(pool.starting)
        if self.c.scales and startable > 0:
            arrivals.append((startup or 0.0, per_replica * startable))
        ahead = self.queues[pool.name].ahead_of_newest(t.priority)
        releases = pool.service.releases_per_s()  # None until measured: then it holds
        outlook = StartOutlook(ahead, free, releases, tuple(arrivals))
        return admission_decision(outlook, t.start_by - now).action == "refuse"

    # -- holding and handing over ----------------------------------------------------------------
    def _hold(self, now: float, pool: PoolState, t: Ticket) -> None:
        queue = self.queues[pool.name]
        if queue.count >= self.profile.gateway.max_queued_per_pool:
            victim = shed_victim(queue.live(), t.priority)
            if victim is None:
                self.c.drop(t.idx, "429 over capacity")
                return
            self._unhold(victim)
            self.c.drop(victim.idx, "429 shed for a higher priority")
        t.held_in, t.hold_seq = pool.name, next(self.holds)
        queue.push(t)
        queue.count += 1
        queue.tokens += self.c.prompt[t.idx]
        queue.by_priority[t.priority] = queue.by_priority.get(t.priority, 0) + 1
        if pool is self.c.decode and t.local and self.c.ledger.diverted[t.idx]:
            self.diverted_held.push(t)

    def _unhold(self, t: Ticket) -> None:
        if t.held_in is not None:
            queue = self.queues[t.held_in]
            queue.count -= 1
            queue.tokens -= self.c.prompt[t.idx]
            queue.by_priority[t.priority] -= 1
            t.held_in = None

    def hand_off(self, now: float, pool: PoolState) -> None:
        """The pool's room goes to its held requests in release order; a prefill pool's room
        left over goes to long prompts held for local prefill on the decode pool."""
        limits = self.limits(pool)
        queues = [self.queues[pool.name]]
        if pool.role is Role.prefill:
            queues.append(self.diverted_held)
        for queue in queues:
            while (t := queue.head()) is not None:
                replica = self._room(now, pool, limits)
                if replica is None:
                    return
                self._unhold(t)
                if t.local:  # late binding: held for local prefill, the prefill pool has room
                    t.local = False
                    self.c.ledger.divert(t.idx, self.c.prompt[t.idx], False)
                self._start(now, pool, replica, t)

    def replan(self, now: float, pool: PoolState) -> None:
        """A replica became ready: every request held for the pool plans again, in order."""
        tickets = release_order(self.queues[pool.name].live())
        for t in tickets:
            self._unhold(t)
        for t in tickets:
            if self.c.config.late_binding:
                self.place(now, t, held=True)
            else:
                self._resend(now, t)
        self.hand_off(now, pool)

    def expire(self, now: float, pool: PoolState) -> None:
        late_binding = self.c.config.late_binding
        queue = self.queues[pool.name]
        while (t := queue.head()) is not None:
            refuse = late_binding and not t.hop and t.start_by < t.hold_until
            if (t.start_by if refuse else t.hold_until) > now:
                return
            self._unhold(t)
            self.c.drop(t.idx, "429 not started by its deadline" if refuse else "503 held too long")

    # -- starting a request on a replica ---------------------------------------------------------
    def _pool_for(self, route: Route) -> PoolState:
        prefill = self.c.prefill
        return prefill if route == "disaggregated" and prefill is not None else self.c.decode

    def _start(self, now: float, pool: PoolState, replica: Any, t: Ticket) -> None:
        pool.service.change(+1, now)
        if pool.role is Role.prefill:
            self.c.prefill_on(now, replica, t)
        else:
            self.c.decode_on(now, replica, t)

    # -- the gateway before issue 18 -------------------------------------------------------------
    def _place_at_once(self, now: float, t: Ticket) -> None:
        snapshot = self.c.routing_snapshot(now)
        decision = decide_route(self.profile, self.c.prompt[t.idx], snapshot)
        t.local = decision.route == "local"
        pool = self._pool_for(decision.route)
        pool.arrivals += 1
        self._send_at_once(now, pool, t)

    def _send_at_once(self, now: float, pool: PoolState, t: Ticket) -> None:
        if not pool.ready:
            self._hold(now, pool, t)
            return
        candidates = next(self.c.candidates(pool))
        loads = [self.c.load(pool, r, now) for r in candidates]
        routing = self.profile.routing
        chosen, pool.picker = pick(
            routing.picker, loads, pool.picker, None, routing.prefix_affinity_load_cap
        )
        self._start(now, pool, next(r for r in candidates if r.life.id == chosen), t)

    def _resend(self, now: float, t: Ticket) -> None:
        pool = self.c.decode if t.hop or t.local else self._pool_for("disaggregated")
        self._send_at_once(now, pool, t)
