"""Admission: how many requests a replica takes, who leaves the gateway's queue first, what counts
toward a pool's demand, and whether a request can start within its deadline.

Pure functions over plain numbers (the clock is never read here): the gateway's admission unit
(`pools/admission.py`) and the cluster simulator in bench/ call the same ones.

- `replica_capacity`: requests one replica may have in flight, the tightest of the engine's
  `max_num_seqs`, its KV headroom as scraped, the pool's per-replica target (only while the pool
  can still grow: holding at the gateway pays only when capacity is coming) and a configured cap.
- `choose_with_room`: the picker's choice among the replicas that have room, or None.
- `release_order` / `ahead_of` / `shed_victim`: priority first (higher first), FIFO within one;
  the lowest priority, newest, is shed first.
- `demand_pool` (`prompt_pool`) / `counted_demand`: a prompt counts toward the pool the route
  rule would send it to (the prefill pool from the threshold up, in disaggregated mode)
  whether it is held there, sent there, or served elsewhere because that pool is cold.
- `can_hold`: cold is not broken; hold only for a pool that is ready, starting, or can start.
- `admission_decision`: admit now, hold, or refuse at once (429, Retry-After) when the request
  cannot start within its deadline given the queue ahead and the capacity coming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from pdserve.policies.picking import PickerState, pick
from pdserve.policies.types import ReplicaLoad
from pdserve.profile import Picker, Profile, RoutingMode, RoutingSpec

# --- per-replica capacity --------------------------------------------------------------------


@dataclass(frozen=True)
class CapacityLimits:
    """The limits on one pool's replicas, as `replica_capacity` applies them."""

    max_num_seqs: int  # the engine's batch limit
    target: float | None = None  # the pool's per-replica target; None: it does not bind now
    cap: int | None = None  # the pool's configured most-in-flight per replica
    kv_high_watermark: float = 1.0  # KV usage above which a replica takes nothing new


@dataclass(frozen=True)
class Capacity:
    slots: int  # requests the replica may have in flight
    bound: str  # which limit binds, e.g. "target 4"


def kv_slots(load: ReplicaLoad, watermark: float) -> int | None:
    """Sequences the replica's KV cache holds up to the watermark, scaled from what it holds now
    (usage per running sequence); None while nothing runs (no usage to scale from)."""
    if load.running <= 0 or load.kv_usage <= 0:
        return None
    per_sequence = load.kv_usage / load.running
    return max(0, math.floor(watermark / per_sequence + 1e-9))


def replica_capacity(load: ReplicaLoad, limits: CapacityLimits) -> Capacity:
    """The tightest of the limits; ties name the first of engine, kv, target, cap. A replica
    always has room for one request when it has none in flight (KV as scraped may lag)."""
    bounds = [(limits.max_num_seqs, f"max_num_seqs {limits.max_num_seqs}")]
    kv = kv_slots(load, limits.kv_high_watermark)
    if kv is not None:
        bounds.append((kv, f"kv {load.kv_usage:.2f} for {load.running} running -> {kv}"))
    if limits.target is not None:
        target = max(1, math.ceil(limits.target - 1e-9))
        bounds.append((target, f"target {target}"))
    if limits.cap is not None:
        bounds.append((limits.cap, f"cap {limits.cap}"))
    slots, bound = min(bounds, key=lambda b: b[0])
    if slots < 1:
        return Capacity(1, f"{bound}, but at least 1")
    return Capacity(slots, bound)


def has_room(load: ReplicaLoad, limits: CapacityLimits) -> bool:
    return load.inflight < replica_capacity(load, limits).slots


def target_binds(ready: int, starting: int, max_replicas: int, can_start: bool) -> bool:
    """The pool's target caps a replica only while capacity is coming: a replica is starting, or
    one can still be started. At its maximum the engine's own limits bind."""
    return starting > 0 or (can_start and ready + starting < max_replicas)


def choose_with_room(
    picker: Picker,
    loads: Sequence[ReplicaLoad],
    limits: CapacityLimits,
    state: PickerState,
    affinity_key: str | None,
    load_cap: int,
) -> tuple[str | None, PickerState]:
    """The picker's choice among the replicas with room; (None, state) when every one is full."""
    roomy = [load for load in loads if has_room(load, limits)]
    if not roomy:
        return None, state
    return pick(picker, roomy, state, affinity_key, load_cap)


# --- release order ---------------------------------------------------------------------------


class Queued(Protocol):
    @property
    def priority(self) -> int: ...

    @property
    def arrival(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


def release_key(priority: int, arrival: int) -> tuple[int, int]:
    """Sort key of a held request: higher priority first, then earlier arrival."""
    return (-priority, arrival)


def release_order(held: Iterable[Q]) -> list[Q]:
    return sorted(held, key=lambda h: release_key(h.priority, h.arrival))


def ahead_of(held: Iterable[Queued], priority: int, arrival: int) -> int:
    """Held requests that leave the queue before one of this priority and arrival."""
    mine = release_key(priority, arrival)
    return sum(1 for h in held if release_key(h.priority, h.arrival) < mine)


def shed_victim(held: Iterable[Q], priority: int) -> Q | None:
    """When the queue is full: the lowest-priority, newest held request, if it ranks below a
    newcomer of `priority`; None when the newcomer itself must be refused."""
    lowest = max(held, key=lambda h: release_key(h.priority, h.arrival), default=None)
    if lowest is None or lowest.priority >= priority:
        return None
    return lowest


# --- demand accounting -----------------------------------------------------------------------


def demand_pool(profile: Profile, uncached_tokens: int) -> str:
    """The pool whose demand a new prompt counts toward: the prefill pool from the threshold up
    in disaggregated mode (held, sent, or prefilled locally while that pool is cold), else the
    decode pool."""
    return prompt_pool(profile.routing, profile.prefill_pool, profile.decode_pool, uncached_tokens)


def prompt_pool(
    routing: RoutingSpec, prefill_pool: str | None, decode_pool: str, uncached_tokens: int
) -> str:
    """`demand_pool` over the profile's parts (the gateway's hot path has the names at hand)."""
    disaggregated = routing.mode is RoutingMode.disaggregated
    if disaggregated and prefill_pool is not None and uncached_tokens >= routing.prefill_threshold:
        return prefill_pool
    return decode_pool


@dataclass(frozen=True)
class DemandCounts:
    requests: int = 0
    prompt_tokens: int = 0


def counted_demand(held: DemandCounts, sent: DemandCounts, elsewhere: DemandCounts) -> DemandCounts:
    """A pool's demand: held for it, in flight on it, and its prompts served elsewhere (diverted
    to local prefill because it was cold) that have no first token yet."""
    return DemandCounts(
        held.requests + sent.requests + elsewhere.requests,
        held.prompt_tokens + sent.prompt_tokens + elsewhere.prompt_tokens,
    )


# --- cold is not broken, and refusing early --------------------------------------------------


def can_hold(ready: int, starting: int, startable: int) -> bool:
    """A request may wait for a pool only while a replica of it is ready, starting, or can be
    started (`startable`: replicas the actuator could still add). Otherwise the pool is broken:
    fail over (local prefill) or fail now."""
    return ready > 0 or starting > 0 or startable > 0


@dataclass(frozen=True)
class StartOutlook:
    """What a pool offers a request that arrives now."""

    ahead: int  # held requests that leave the queue before it
    free_slots: int  # room now on ready replicas
    # slots freed per second by finishing requests; None: not measured yet (then it holds)
    releases_per_s: float | None = 0.0
    # (seconds from now, slots) of capacity coming; a caller that has not measured a cold start
    # yet passes 0 (hold rather than refuse on a guess)
    arrivals: tuple[tuple[float, int], ...] = ()


Action = Literal["admit", "hold", "refuse"]


@dataclass(frozen=True)
class AdmissionDecision:
    action: Action
    wait_s: float  # expected seconds until it can start (inf: nothing is coming)
    reason: str
    retry_after_s: float | None = None  # set when refused


def start_wait_s(
    needed: int, releases_per_s: float, arrivals: Sequence[tuple[float, int]]
) -> float:
    """The earliest t at which releases_per_s * t + the slots arrived by t reach `needed`."""
    if needed <= 0:
        return 0.0
    steps = sorted(arrivals)
    arrived = 0
    for index, (at, slots) in enumerate(steps):
        # before this arrival only the releases (and earlier arrivals) count
        if releases_per_s > 0:
            t = (needed - arrived) / releases_per_s
            start = steps[index - 1][0] if index else 0.0
            if t <= at:
                return max(t, start)
        arrived += slots
        if arrived >= needed:
            return max(at, 0.0)
    if releases_per_s > 0:
        last = steps[-1][0] if steps else 0.0
        return max(last, (needed - arrived) / releases_per_s)
    return math.inf


def admission_decision(outlook: StartOutlook, deadline_s: float) -> AdmissionDecision:
    """Admit when a slot is free for it (none ahead takes it first); hold when it can start
    within `deadline_s` (or the release rate is not known yet); else refuse at once, telling
    the client when to come back. Lower priorities have more requests ahead, so they are refused
    first."""
    if outlook.free_slots > outlook.ahead:
        return AdmissionDecision("admit", 0.0, f"{outlook.free_slots} free > {outlook.ahead} ahead")
    needed = outlook.ahead - outlook.free_slots + 1
    if outlook.releases_per_s is None:
        return AdmissionDecision("hold", 0.0, f"{needed} slots needed, release rate not measured")
    wait = start_wait_s(needed, outlook.releases_per_s, outlook.arrivals)
    coming = sum(slots for _, slots in outlook.arrivals)
    text = (
        f"{outlook.ahead} ahead, {outlook.free_slots} free: {needed} slots needed at "
        f"{outlook.releases_per_s:.2f}/s released + {coming} coming -> wait "
        + (f"{wait:.2f} s" if math.isfinite(wait) else "unbounded")
    )
    if wait <= deadline_s:
        return AdmissionDecision("hold", wait, f"{text} <= deadline {deadline_s:g} s")
    retry = wait if math.isfinite(wait) else deadline_s
    return AdmissionDecision("refuse", wait, f"{text} > deadline {deadline_s:g} s", retry)
