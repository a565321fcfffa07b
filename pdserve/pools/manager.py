"""The pool manager: every pool's replicas, their health, hold queues, scaling and profile switch.

The gateway asks it for a replica (`acquire`/`release`); the autoscaler reads `snapshot` and
calls `scale_to`; a refresh loop (`pools.refresh`) keeps each replica's observations current
from its actuator, /health and /metrics. Replica state is always derived
(`pools.replica.replica_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from pdserve.actuators.base import Actuator
from pdserve.policies.picking import preferred_replica
from pdserve.policies.routing_snapshot import RoutingObservation, routing_snapshot
from pdserve.policies.types import RoutingSnapshot, ScaleDecision
from pdserve.pools.adapters import AdapterResidency
from pdserve.pools.admission import Admission, Placement, Ticket
from pdserve.pools.hold import NoReplica, Overloaded, PoolDropped, Refused
from pdserve.pools.kv_proof import FaultObserver, KvProof
from pdserve.pools.peers import HeldDemand, PeerDemand, PeerGateways, PeerPoller, local_demand
from pdserve.pools.pool import Pool, drain_victims, wait_drained
from pdserve.pools.refresh import Refresh
from pdserve.pools.replica import Replica, ReplicaState, replica_state
from pdserve.pools.scraper import ProbeClient
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.pools.switch import ProfileSwitch
from pdserve.pools.views import PoolView, pool_view, pool_work
from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Device, Picker, Profile
from pdserve.workers.vllm_command import CPU_BLOCK_SIZE, GPU_BLOCK_SIZE

log = logging.getLogger(__name__)

StartupObserver = Callable[[str, float], None]


__all__ = [
    "NoReplica",
    "Overloaded",
    "Placement",
    "PoolDropped",
    "PoolManager",
    "Refused",
    "Ticket",
]


class PoolManager:
    def __init__(
        self,
        profile: Profile,
        actuator: Actuator,
        client: ProbeClient,
        clock: Callable[[], float] = time.monotonic,
        on_startup: StartupObserver | None = None,
        on_decision: Callable[[ScaleDecision], None] | None = None,
    ) -> None:
        self.profile = profile  # the active profile: routing and pool names follow it
        self.actuator = actuator
        self.client = client
        self.clock = clock
        self.on_startup = on_startup
        self.on_decision = on_decision
        self.demand = asyncio.Event()
        # demand held at the other gateways, reported to this one while it leads (pools.peers)
        self.peer_demand = PeerDemand()
        self.pools: dict[str, Pool] = {}
        self.switch = ProfileSwitch(self)
        self.admission = Admission(self)  # per-replica capacity, the hold queues, late binding
        self.refreshing = Refresh(self)  # the refresh round: health, metrics, sync, replacement
        self._loop_task: asyncio.Task[None] | None = None
        self.kv_proof = KvProof(lambda: self.pools)  # did disaggregated requests pull their KV
        self._adapters = AdapterResidency()  # which LoRA adapters each replica holds

    @property
    def adapter_residency(self) -> AdapterResidency:
        """Which LoRA adapters each replica holds: the gateway's loads and unloads, re-learned
        from each replica's /v1/models on every scrape."""
        return self._adapters

    @property
    def launch_profile(self) -> Profile:
        """The profile new workers are launched with: the pending one during a switch."""
        return self.switch.pending or self.profile

    def new_pool(self, profile: Profile, name: str) -> Pool:
        queue_limit = profile.gateway.max_queued_per_pool
        block_size = CPU_BLOCK_SIZE if profile.engine.device is Device.cpu else GPU_BLOCK_SIZE
        key = worker_spec_key(profile, name)
        return Pool(name, profile.pools[name], key, queue_limit, block_size)

    async def start(self) -> None:
        for name in self.profile.pools:
            pool = self.new_pool(self.profile, name)
            self.pools[name] = pool
            await self.actuator.scale(name, pool.desired, [])
        await self.refresh()
        self._loop_task = asyncio.create_task(self.refreshing.loop())

    async def close(self) -> None:
        await self.switch.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    # --- the autoscaler's interface -------------------------------------------------------

    def pool_names(self) -> list[str]:
        return [name for name in self.profile.pools if name in self.pools]

    def snapshot(self, pool: str, now: float) -> PoolSnapshot:
        p = self.pools[pool]
        ready = [r for r in p.replicas.values() if replica_state(r) is ReplicaState.ready]
        replicas = list(p.replicas.values())
        peers = self.peer_demand.total(pool, now)
        return PoolSnapshot(
            pool=pool,
            now=now,
            ready=len(ready),
            starting=p.count(ReplicaState.starting),
            draining=p.count(ReplicaState.draining),
            queued_requests=len(p.queue) + peers.queued_requests,
            queued_prompt_tokens=p.queue.tokens
            + sum(r.inflight_prompt_tokens for r in replicas)
            + p.diverted_tokens
            + peers.prompt_tokens,
            diverted_requests=p.diverted_requests + peers.diverted_requests,
            running=sum(r.running for r in replicas),
            waiting=sum(r.waiting for r in replicas),
            inflight=sum(r.inflight for r in replicas),
            kv_usage_max=max((r.kv_usage for r in ready), default=0.0),
            prefill_tokens_per_s=p.prefill_tokens_per_s,
        )

    def record_decision(self, decision: ScaleDecision) -> None:
        pool = self.pools.get(decision.pool)
        if pool is not None:
            pool.last_decision = decision
            if decision.direction != "none":
                pool.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)

    async def scale_to(self, decision: ScaleDecision) -> None:
        """Apply a decision (the autoscaler records every decision separately)."""
        pool = self.pools.get(decision.pool)
        if pool is None or self.switch.pending is not None:
            return  # a profile switch owns the pools' sizes until it completes
        async with pool.lock:
            pool.desired = decision.desired
            members = pool.members()
            if decision.desired >= len(members):
                await self.actuator.scale(pool.name, decision.desired, [])
                return
            victims = drain_victims(pool, len(members) - decision.desired)
            await self.drain_and_remove(pool, victims, decision.desired)

    async def drain_and_remove(self, pool: Pool, victims: list[Replica], desired: int) -> None:
        """Stop sending to the victims, let their in-flight requests finish, then remove them."""
        for victim in victims:
            victim.draining = True
        if not await wait_drained(victims, pool.spec.scaling.drain_timeout_s):
            log.warning(
                "pool %s: drain timed out, removing replicas with requests in flight", pool.name
            )
        await self.actuator.scale(pool.name, desired, [v.id for v in victims])
        for victim in victims:
            self.refreshing.remove(pool, victim.id)

    # --- the gateway's interface ----------------------------------------------------------

    async def acquire(
        self,
        pool_name: str,
        *,
        priority: int = 0,
        prompt_tokens: int = 0,
        affinity_key: str | None = None,
        exclude: Iterable[str] = (),
    ) -> Replica:
        """A replica of the pool with room (counted in flight), holding the request until one is.

        Raises `Overloaded` when the hold queue is full, `NoReplica` after the hold timeout or
        when the pool cannot start a replica, and `PoolDropped` when a live switch dropped it.
        """
        ticket = self.admission.ticket(self.profile, priority, prompt_tokens, None, affinity_key)
        return await self.admission.acquire(pool_name, ticket, frozenset(exclude))

    def ticket(
        self,
        profile: Profile,
        *,
        priority: int = 0,
        prompt_tokens: int = 0,
        uncached_tokens: int | None = None,
        affinity_key: str | None = None,
        deadline_s: float | None = None,
    ) -> Ticket:
        """A new request's place in the admission order (its arrival) and its deadlines."""
        return self.admission.ticket(
            profile, priority, prompt_tokens, uncached_tokens, affinity_key, deadline_s
        )

    async def place(self, ticket: Ticket) -> Placement:
        """Route and replica for a new request, chosen when it can start (late binding).
        Raises `Refused` (cannot start within its deadline) or `Overloaded` (429),
        `NoReplica` (503)."""
        return await self.admission.place(ticket)

    async def acquire_for(
        self, pool_name: str, ticket: Ticket, exclude: Iterable[str] = ()
    ) -> Replica:
        """A replica of one pool for a placed request (its decode hop), in its arrival order."""
        return await self.admission.acquire(pool_name, ticket, frozenset(exclude))

    def settle(self, ticket: Ticket) -> None:
        """The request's prefill is over: it stops counting toward a cold pool's demand."""
        self.admission.settle(ticket)

    def release(self, replica: Replica, prompt_tokens: int = 0) -> None:
        """The request on the replica is over; its slot goes to a held request at once."""
        self.admission.release(replica, prompt_tokens)

    def begin_local_prefill(self, replica: Replica, prompt_tokens: int) -> None:
        """A prompt sent to a decode replica to be prefilled there (the `local` route)."""
        replica.local_prefill_tokens += prompt_tokens

    def end_local_prefill(
        self, pool_name: str, replica: Replica, prompt_tokens: int, sent: float | None, now: float
    ) -> None:
        """Its first token arrived (`sent` is set) or the attempt failed (`sent` is None).
        Prompts from the routing threshold up are samples of the replica's prefill rate."""
        replica.local_prefill_tokens = max(0, replica.local_prefill_tokens - prompt_tokens)
        pool = self.pools.get(pool_name)
        profile = self.profile
        model = profile.model_of(pool_name) if pool_name in profile.pools else profile.model.name
        sample = prompt_tokens >= profile.routing_of(model).prefill_threshold
        if sent is not None and pool is not None and sample:
            pool.observe_prefill(replica, prompt_tokens, sent, now)

    def routing_snapshot(self, profile: Profile, now: float) -> RoutingSnapshot:
        """Both pools' prefill work, as the route decision reads it."""
        prefill = self.pools.get(profile.prefill_pool or "")
        decode = self.pools.get(profile.decode_pool)
        observed = RoutingObservation(
            now=now,
            prefill=pool_work(prefill) if prefill is not None else None,
            decode=pool_work(decode) if decode is not None else None,
        )
        return routing_snapshot(observed)

    def expected_cached_tokens(
        self, pool_name: str, affinity_key: str | None, hashes: list[int]
    ) -> int:
        """Prompt tokens the replica this request will likely land on has cached: with
        prefix-affinity the preferred replica's longest cached prefix; otherwise 0 (no
        expectation of landing on a warm replica)."""
        pool = self.pools.get(pool_name)
        if pool is None or not hashes or affinity_key is None:
            return 0
        if self.profile.routing.picker is not Picker.prefix_affinity:
            return 0
        candidates = pool.serving()
        if not candidates:
            return 0
        preferred = preferred_replica([r.load() for r in candidates], affinity_key)
        return pool.prefixes.cached_tokens(preferred.id, hashes)

    def record_prefix(self, pool_name: str, replica: Replica, hashes: list[int]) -> None:
        pool = self.pools.get(pool_name)
        if pool is not None and hashes:
            pool.prefixes.record(replica.id, hashes)

    def block_size(self, pool_name: str) -> int:
        pool = self.pools.get(pool_name)
        return pool.prefixes.block_size if pool is not None else GPU_BLOCK_SIZE

    def ready_count(self, pool_name: str) -> int:
        pool = self.pools.get(pool_name)
        return len(pool.serving()) if pool is not None else 0

    def observe_prefill(
        self, pool_name: str, replica: Replica, prompt_tokens: int, sent: float, now: float
    ) -> None:
        """A prefill hop's answer arrived: a sample of the pool's per-replica prefill rate."""
        pool = self.pools.get(pool_name)
        if pool is not None:
            pool.observe_prefill(replica, prompt_tokens, sent, now)

    def record_disaggregated(self, decode: Replica, prefill_id: str, prompt_tokens: int) -> None:
        """A disaggregated request's first token came from `decode`, prefilled on `prefill_id`:
        the decode worker's counters should show its KV pulled (`pools.kv_proof`)."""
        self.kv_proof.served(decode, prefill_id, prompt_tokens)

    def on_kv_fault(self, observer: FaultObserver) -> None:
        """Call `observer(pool, reason)` for each replica found serving without pulled KV."""
        self.kv_proof.on_fault = observer

    def release_target(self, pool_name: str) -> Replica | None:
        """A serving replica for a request outside admission (a one-token KV release), or None;
        not counted in flight: the caller does not `release` it."""
        pool = self.pools.get(pool_name)
        return min(pool.serving(), key=lambda r: r.inflight, default=None) if pool else None

    def eject(self, replica: Replica) -> None:
        """A request to the replica failed: no new requests until a probe finds it healthy."""
        replica.eject()

    def pool_views(self, now: float) -> list[PoolView]:
        """Every pool, dropped ones still draining included, as read-only copies."""
        return [
            pool_view(pool, self.snapshot(name, now), name in self.profile.pools)
            for name, pool in list(self.pools.items())
        ]

    def local_demand(self) -> dict[str, HeldDemand]:
        """Requests held or diverted here, per pool (peers' reports not included)."""
        return local_demand(self.pools)

    def peer_poller(self, peers: PeerGateways, admin_token: str | None) -> PeerPoller:
        """The leader's poll of its peers' held demand into this manager's snapshots."""
        return PeerPoller(
            source=peers,
            board=self.peer_demand,
            demand=self.demand,
            port=lambda: self.profile.gateway.port,
            admin_token=admin_token,
            interval_s=self.profile.gateway.metrics_interval_s,
        )

    @property
    def pending_profile(self) -> Profile | None:
        """The profile a live switch is moving to, until it becomes active."""
        return self.switch.pending

    async def switch_profile(self, new: Profile) -> None:
        """Begin a live switch to `new`; `SwitchInProgress` while another one is under way."""
        await self.switch.begin(new)

    # --- keeping observations current (pools.refresh) --------------------------------------

    async def refresh(self) -> None:
        """One round: sync with the actuator, probe every replica, replace dead ones."""
        await self.refreshing.round()
