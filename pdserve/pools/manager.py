"""The pool manager: every pool's replicas, their health, hold queues, scaling and profile switch.

The gateway asks it for a replica (`acquire`/`release`); the autoscaler reads `snapshot` and
calls `scale_to`; a refresh loop keeps each replica's observations current from its actuator,
/health and /metrics. Replica state is always derived (`pools.replica.replica_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from pdserve.actuators.base import Actuator
from pdserve.policies.picking import pick, preferred_replica
from pdserve.policies.types import RoutingSnapshot, ScaleDecision
from pdserve.pools.hold import Overloaded
from pdserve.pools.pool import Pool, drain_victims, wait_drained
from pdserve.pools.replica import Replica, ReplicaState, replica_state
from pdserve.pools.scraper import ProbeClient, probe_all
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.pools.switch import ProfileSwitch
from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Device, Picker, Profile

log = logging.getLogger(__name__)

StartupObserver = Callable[[str, float], None]
CPU_BLOCK_SIZE, GPU_BLOCK_SIZE = 128, 16  # vLLM's KV block sizes (tokens)


class NoReplica(Exception):
    """No ready replica within the hold timeout (HTTP 503)."""


class PoolDropped(NoReplica):
    """A live switch dropped the pool before the request could start on it: the request should
    follow the active profile instead (a 503 where nothing catches it)."""


__all__ = ["NoReplica", "Overloaded", "PoolDropped", "PoolManager"]


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
        self.pools: dict[str, Pool] = {}
        self.switch = ProfileSwitch(self)
        self._loop_task: asyncio.Task[None] | None = None

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
        self._loop_task = asyncio.create_task(self._refresh_loop())

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
        return PoolSnapshot(
            pool=pool,
            now=now,
            ready=len(ready),
            starting=p.count(ReplicaState.starting),
            draining=p.count(ReplicaState.draining),
            queued_requests=len(p.queue),
            queued_prompt_tokens=p.queue.tokens + sum(r.inflight_prompt_tokens for r in replicas),
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
            pool.remove(victim.id)

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
        """A ready replica of the pool (counted in flight), holding the request until one is.

        Raises `Overloaded` when the hold queue is full, `NoReplica` after the hold timeout and
        `PoolDropped` when a live switch has dropped the pool.
        """
        pool = self.pools.get(pool_name)
        if pool is None:
            raise PoolDropped(f"pool {pool_name} is no longer part of the active profile")
        timeout_s = self.profile.gateway.queue_timeout_s
        deadline = self.clock() + timeout_s
        excluded = set(exclude)
        while True:
            replica = self._pick(pool, affinity_key, excluded)
            if replica is not None:
                if replica.inflight == 0:
                    replica.busy_since = self.clock()
                replica.inflight += 1
                replica.inflight_prompt_tokens += prompt_tokens
                return replica
            if pool.retiring:
                raise PoolDropped(f"pool {pool_name} was dropped by a profile switch")
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise NoReplica(f"no ready replica in pool {pool_name} within {timeout_s:g} s")
            held = pool.queue.hold(priority, prompt_tokens)
            self.demand.set()
            try:
                await asyncio.wait_for(asyncio.shield(held.future), remaining)
            except TimeoutError:
                raise NoReplica(
                    f"no ready replica in pool {pool_name} within {timeout_s:g} s"
                ) from None
            finally:
                pool.queue.remove(held)

    def _pick(self, pool: Pool, affinity_key: str | None, exclude: set[str]) -> Replica | None:
        candidates = pool.serving(exclude)
        if not candidates:
            return None
        routing = self.profile.routing
        chosen, pool.picker_state = pick(
            routing.picker,
            [r.load() for r in candidates],
            pool.picker_state,
            affinity_key,
            routing.prefix_affinity_load_cap,
        )
        return next(r for r in candidates if r.id == chosen)

    def release(self, replica: Replica, prompt_tokens: int = 0) -> None:
        replica.inflight = max(0, replica.inflight - 1)
        replica.inflight_prompt_tokens = max(0, replica.inflight_prompt_tokens - prompt_tokens)

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
        sample = prompt_tokens >= self.profile.routing.prefill_threshold
        if sent is not None and pool is not None and sample:
            pool.observe_prefill(replica, prompt_tokens, sent, now)

    def routing_snapshot(self, profile: Profile, now: float) -> RoutingSnapshot:
        """Both pools' prefill work, as the route decision reads it."""
        prefill = self.pools.get(profile.prefill_pool or "")
        if prefill is None:
            return RoutingSnapshot(0, 0, 1.0)
        decode = self.pools.get(profile.decode_pool)
        local = decode.serving() if decode is not None else []
        rate = _rate(prefill)
        backlog = prefill.queue.tokens + sum(
            _unfinished_tokens(r, rate, now) for r in prefill.replicas.values()
        )
        return RoutingSnapshot(
            prefill_ready=len(prefill.serving()),
            prefill_backlog_tokens=backlog,
            prefill_tokens_per_s=rate,
            local_ready=len(local),
            local_backlog_tokens=sum(r.local_prefill_tokens for r in local),
            local_tokens_per_s=_rate(decode) if decode is not None else 0.0,
        )

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

    # --- keeping observations current -----------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.profile.gateway.metrics_interval_s)
            try:
                await self.refresh()
            except Exception:  # the loop must outlive one bad round
                log.exception("pool refresh failed")

    async def refresh(self) -> None:
        """One round: sync with the actuator, probe every replica, replace dead ones."""
        for pool in list(self.pools.values()):
            await self._sync(pool)
        replicas = [r for p in self.pools.values() for r in p.replicas.values()]
        await probe_all(self.client, replicas)
        now = self.clock()
        for pool in list(self.pools.values()):
            self._note_startups(pool, now)
            if pool.serving():
                pool.queue.release_all()
            await self._replace_dead(pool)
        await self.switch.advance()

    async def _sync(self, pool: Pool) -> None:
        handles = {h.id: h for h in await self.actuator.replicas(pool.name)}
        for replica_id, handle in handles.items():
            known = pool.replicas.get(replica_id)
            if known is None:
                pool.replicas[replica_id] = Replica(handle=handle, alive=handle.alive)
            else:
                known.handle = handle
                known.alive = handle.alive
        for replica_id in [rid for rid in pool.replicas if rid not in handles]:
            pool.remove(replica_id)

    def _note_startups(self, pool: Pool, now: float) -> None:
        for replica in pool.replicas.values():
            if replica.ever_healthy and replica.labels.get("startup") is None:
                replica.labels["startup"] = "seen"
                if self.on_startup is not None and replica.handle.started_at > 0:
                    self.on_startup(pool.name, max(0.0, now - replica.handle.started_at))

    async def _replace_dead(self, pool: Pool) -> None:
        dead = [r for r in pool.replicas.values() if not r.alive and not r.draining]
        if not dead or pool.lock.locked():
            return
        async with pool.lock:
            log.warning("pool %s: replacing dead replicas %s", pool.name, [r.id for r in dead])
            size = len(pool.members()) + len(dead)
            await self.actuator.scale(pool.name, size, [r.id for r in dead])
            for replica in dead:
                pool.remove(replica.id)


def _rate(pool: Pool) -> float:
    """One replica's prefill throughput: measured, else the pool's configured estimate."""
    return pool.prefill_tokens_per_s or pool.spec.scaling.prefill_tokens_per_s


def _unfinished_tokens(replica: Replica, tokens_per_s: float, now: float) -> int:
    """Prompt tokens a prefill replica still has to process: its in-flight prompts less what
    it has done since it started on the oldest of them (prompts are prefilled in order)."""
    started = max(replica.busy_since, replica.prefill_done_at)
    done = max(0.0, now - started) * tokens_per_s
    return max(0, replica.inflight_prompt_tokens - int(done))
