"""The event loop: arrivals from a sorted array, a heap of replica events, autoscaler ticks.

Every arrival goes to the simulated gateway (`gateway.py`: pdserve's route decision, endpoint
picker and admission functions). Pools of up to `picker_all_up_to` ready replicas offer the
picker every one, larger ones a random sample of `picker_sample` (the power of two choices, as
Ray Serve's router does; a larger sample, then all, when none has room), so a request costs the
same in a 1,000-replica pool as in a small one. The autoscaler part calls a `Scaler` every
`interval_s` with the same `PoolSnapshot` the gateway builds, demand counted by
`policies.admission.counted_demand`.

A disaggregated request's decode replica is picked when its KV has arrived (prefill end plus
`kv_transfer_seconds`); the real gateway picks it when the prefill answers, one transfer earlier.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

from bench.clustersim.config import (
    ColdStart,
    PoolState,
    Scaler,
    SimConfig,
    SimResult,
    TickView,
    Timeline,
)
from bench.clustersim.gateway import SimGateway, Ticket
from bench.clustersim.replicas import (
    DecodeReplica,
    Ledger,
    PrefillReplica,
    ReplicaLife,
    kv_capacity_tokens,
)
from bench.workload import Requests
from pdserve.policies.admission import DemandCounts, counted_demand
from pdserve.policies.picking import pick
from pdserve.policies.routing import decide_route
from pdserve.policies.types import ReplicaLoad, RoutingSnapshot
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Role
from pdserve.workers.sim import roofline as hardware

__all__ = ["ColdStart", "SimConfig", "SimResult", "TickView", "decide_route", "pick", "simulate"]

_WAKE, _KV, _FREE, _READY, _TICK = 0, 1, 2, 3, 4


class Cluster:
    """A simulated cluster running one profile over one request array with one scaler."""

    def __init__(self, config: SimConfig, requests: Requests, scaler: Scaler) -> None:
        self.config, self.requests, self.scaler = config, requests, scaler
        self.profile, self.model = config.profile, config.model
        self.scales = bool(getattr(scaler, "scales", True))  # static counts never start one
        self.ledger = Ledger.empty(len(requests))
        self.rng = random.Random(config.seed)
        self.heap: list[tuple[float, int, int, object]] = []
        self.counter = itertools.count()
        self.timeline = Timeline()
        self.prompt = requests.prompt_tokens.tolist()
        self.output = requests.output_tokens.tolist()
        self.arrival = requests.arrival.tolist()
        self.pools = {name: self._pool(name, spec) for name, spec in self.profile.pools.items()}
        self.decode = self.pools[self.profile.decode_pool]
        prefill_name = self.profile.prefill_pool
        self.prefill = self.pools[prefill_name] if prefill_name else None
        self.backlog: list[tuple[float, int]] = []  # prefill pool: (finish, tokens)
        self.backlog_tokens = 0
        self.now = 0.0
        self.gateway = SimGateway(self)

    # -- replicas ------------------------------------------------------------------------------
    def _pool(self, name: str, spec: PoolSpec) -> PoolState:
        pool = PoolState(name, spec, hardware.accelerator(spec.accelerator))
        for _ in range(spec.replicas.start):
            pool.ready.append(self._replica(pool, 0.0, 0.0))
        return pool

    def _replica(self, pool: PoolState, now: float, ready_at: float) -> object:
        tp = pool.spec.tensor_parallel_size
        life = ReplicaLife(
            f"{pool.name}-{len(pool.lives)}",
            pool.name,
            pool.acc.price_per_hour * tp,
            launched_at=now,
            ready_at=ready_at,
        )
        pool.lives.append(life)
        if pool.role is Role.prefill:
            return PrefillReplica(life, pool.acc, self.model)
        engine = self.profile.engine_for(pool.name)
        capacity = kv_capacity_tokens(pool.acc, self.model, engine.gpu_memory_utilization, tp)
        budget = engine.max_num_batched_tokens or 8192
        return DecodeReplica(
            life,
            pool.acc,
            self.model,
            self.ledger,
            engine.max_num_seqs,
            budget,
            capacity,
            pool.step_cache,
        )

    def push(self, when: float, kind: int, obj: object) -> None:
        heapq.heappush(self.heap, (when, next(self.counter), kind, obj))

    def _reschedule(self, replica: DecodeReplica) -> None:
        when = replica.next_event()
        if when < replica.wake_at:
            replica.wake_at = when
            self.push(when, _WAKE, replica)

    # -- what the gateway reads and does -------------------------------------------------------
    def candidates(self, pool: PoolState) -> Iterator[list]:
        """The replicas offered to the picker: all of a small pool; of a large one a random
        sample first, then (while the caller finds no room) one 4x larger, then all of them."""
        ready = pool.ready
        if len(ready) <= self.config.picker_all_up_to:
            yield ready
            return
        draw, n = self.rng.random, len(ready)
        yield [ready[int(draw() * n)] for _ in range(self.config.picker_sample)]
        yield [ready[int(draw() * n)] for _ in range(4 * self.config.picker_sample)]
        yield ready

    def load(self, pool: PoolState, replica: Any, now: float) -> ReplicaLoad:
        return replica.load(now) if pool.role is Role.prefill else replica.load()

    def routing_snapshot(self, now: float) -> RoutingSnapshot:
        prefill, decode = self.prefill, self.decode
        queued = self.gateway.queues[prefill.name].tokens if prefill else 0
        return RoutingSnapshot(
            prefill_ready=len(prefill.ready) if prefill else 0,
            prefill_backlog_tokens=self._prefill_backlog(now) + queued if prefill else 0,
            prefill_tokens_per_s=self._prefill_rate(prefill) if prefill else 1.0,
            local_ready=len(decode.ready),
            local_backlog_tokens=self.ledger.local_prefill_tokens,
            local_tokens_per_s=self._prefill_rate(decode),
            local_running=self.ledger.decoding,
        )

    def _prefill_backlog(self, now: float) -> int:
        backlog = self.backlog
        while backlog and backlog[0][0] <= now:
            self.backlog_tokens -= heapq.heappop(backlog)[1]
        return self.backlog_tokens

    def _prefill_rate(self, pool: PoolState) -> float:
        """The prefill throughput the gateway would have measured: an 1,800-token prompt."""
        if pool.prefill_rate is None:
            pool.prefill_rate = 1800 / hardware.prefill_step_seconds(pool.acc, self.model, 1800)
        return pool.prefill_rate

    def prefill_on(self, now: float, replica: PrefillReplica, t: Ticket) -> None:
        prompt = self.prompt[t.idx]
        finish = replica.assign(now, prompt)
        heapq.heappush(self.backlog, (finish, prompt))
        self.backlog_tokens += prompt
        self.ledger.route_disagg[t.idx] = True
        kv_bytes = prompt * self.model.kv_bytes_per_token
        transfer = hardware.kv_transfer_seconds(replica.acc, self.decode.acc, kv_bytes)
        self.push(finish, _FREE, replica)
        self.push(finish + transfer, _KV, t)

    def decode_on(self, now: float, replica: DecodeReplica, t: Ticket) -> None:
        idx = t.idx
        replica.offer(now, idx, self.prompt[idx], self.output[idx], t.local)
        self._reschedule(replica)

    def drop(self, idx: int, why: str) -> None:
        self.ledger.divert(idx, self.prompt[idx], False)
        self.ledger.dropped[idx] = why
        self.ledger.done += 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        arrival, n = self.arrival, len(self.arrival)
        heap, ledger, gateway = self.heap, self.ledger, self.gateway
        end = (arrival[-1] if n else 0.0) + self.config.tail_s
        self.push(0.0, _TICK, None)
        i = 0
        while True:
            next_event = heap[0][0] if heap else math.inf
            if i < n and arrival[i] <= next_event:
                self.now = arrival[i]
                gateway.arrive(self.now, i)
                i += 1
                continue
            if next_event > end or ledger.done >= n and i >= n:
                break
            now, _, kind, obj = heapq.heappop(heap)
            self.now = now
            if kind == _WAKE:
                self._wake(now, obj)  # type: ignore[arg-type]
            elif kind == _KV:
                gateway.kv_arrived(now, obj)  # type: ignore[arg-type]
            elif kind == _FREE:
                self._freed(now, self.prefill, 1)  # type: ignore[arg-type]
            elif kind == _READY:
                self._ready(now, obj)
            else:
                self._tick(now)
        return self._finish(end)

    def _wake(self, now: float, replica: DecodeReplica) -> None:
        if replica.wake_at != now:
            return  # superseded by a later schedule
        before = replica.running_and_queued()
        replica.wake(now)
        self._freed(now, self.decode, before - replica.running_and_queued())
        self._reschedule(replica)

    def _freed(self, now: float, pool: PoolState, slots: int) -> None:
        """`slots` requests finished on `pool`: their room goes to held requests at once."""
        if slots <= 0:
            return
        for _ in range(slots):
            pool.service.change(-1, now)
        if self.config.late_binding:
            self.gateway.hand_off(now, pool)

    def _ready(self, now: float, replica: Any) -> None:
        life: ReplicaLife = replica.life
        pool = self.pools[life.pool]
        if life.removed_at is not None:
            return
        pool.startup_s = now - life.launched_at
        pool.starting.remove(replica)
        pool.ready.append(replica)
        self.gateway.replan(now, pool)

    def _tick(self, now: float) -> None:
        for pool in self.pools.values():
            self.gateway.expire(now, pool)
            self._retire_drained(now, pool)
            snapshot, view = self._observe(now, pool)
            desired, _reason = self.scaler(pool, snapshot, view)
            self._scale(now, pool, desired)
            self.timeline.rows.append(
                (now, pool.name, len(pool.ready), len(pool.starting), len(pool.draining))
            )
        self.push(now + self._interval(), _TICK, None)

    def _interval(self) -> float:
        return min(p.spec.scaling.interval_s for p in self.pools.values())

    def _retire_drained(self, now: float, pool: PoolState) -> None:
        for replica in list(pool.draining):
            idle = replica.idle(now) if pool.role is Role.prefill else replica.idle()
            if idle:
                pool.draining.remove(replica)
                replica.life.removed_at = now

    def _replica_totals(self, now: float, pool: PoolState) -> tuple[int, int, float, float, int]:
        """Running, waiting, the highest KV usage, busy seconds since the last tick and prompt
        tokens awaiting prefill, over the pool's serving and draining replicas."""
        running = waiting = sent_tokens = 0
        kv_max = busy = 0.0
        for replica in pool.ready + pool.draining:
            if pool.role is Role.prefill:
                load = replica.load(now)
                busy_now = replica.busy_seconds(now)
            else:
                replica.advance(now)
                load, busy_now = replica.load(), replica.busy_s
                kv_max = max(kv_max, load.kv_usage)
                sent_tokens += replica.queued_prompt_tokens()
            running += load.running
            waiting += load.waiting
            busy += busy_now - replica.busy_mark
            replica.busy_mark = busy_now
        return running, waiting, kv_max, busy, sent_tokens

    def _observe(self, now: float, pool: PoolState) -> tuple[PoolSnapshot, TickView]:
        running, waiting, kv_max, busy, sent_tokens = self._replica_totals(now, pool)
        rate, elsewhere = None, DemandCounts()
        if pool.role is Role.prefill:
            sent_tokens += self._prefill_backlog(now)
            rate = self._prefill_rate(pool)
            if self.config.late_binding:  # demand counts where work should go
                elsewhere = DemandCounts(self.ledger.diverted_requests, self.ledger.diverted_tokens)
        queue = self.gateway.queues[pool.name]
        held = DemandCounts(queue.count, queue.tokens)
        demand = counted_demand(held, DemandCounts(running + waiting, sent_tokens), elsewhere)
        snapshot = PoolSnapshot(
            pool=pool.name,
            now=now,
            ready=len(pool.ready),
            starting=len(pool.starting),
            draining=len(pool.draining),
            queued_requests=held.requests,
            queued_prompt_tokens=demand.prompt_tokens,
            running=running,
            waiting=waiting,
            inflight=running + waiting,
            kv_usage_max=kv_max,
            prefill_tokens_per_s=rate,
            diverted_requests=elsewhere.requests,
        )
        interval = self._interval()
        view = TickView(
            utilization=min(1.0, busy / (interval * max(1, len(pool.ready) + len(pool.draining)))),
            qps=pool.arrivals / interval,
        )
        pool.arrivals = 0
        return snapshot, view

    def _scale(self, now: float, pool: PoolState, desired: int) -> None:
        current = len(pool.ready) + len(pool.starting)
        if desired > current:
            ready_at = now + self.config.cold_start.seconds(self.model)
            for _ in range(desired - current):
                replica = self._replica(pool, now, ready_at)
                pool.starting.append(replica)
                self.push(ready_at, _READY, replica)
            return
        excess = current - desired
        while excess and pool.starting:
            pool.starting.pop().life.removed_at = now
            excess -= 1
        if excess:
            pool.ready.sort(key=lambda r: self.load(pool, r, now).load)
            victims, pool.ready = pool.ready[:excess], pool.ready[excess:]
            for victim in victims:
                victim.life.draining = True
            pool.draining.extend(victims)
            self._retire_drained(now, pool)

    def _finish(self, end: float) -> SimResult:
        horizon = min(end, max(self.now, self.arrival[-1] if self.arrival else 0.0))
        for idx, finish in enumerate(self.ledger.finish):
            if math.isnan(finish) and self.ledger.dropped[idx] is None:
                self.drop(idx, "unfinished at the end of the simulation")
        lives = [life for pool in self.pools.values() for life in pool.lives]
        return SimResult(self.requests, self.ledger, lives, self.timeline, horizon)


def simulate(config: SimConfig, requests: Requests, scaler: Scaler) -> SimResult:
    """Run `requests` through a cluster shaped by `config.profile` under `scaler`."""
    return Cluster(config, requests, scaler).run()
