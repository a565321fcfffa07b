"""The event loop: arrivals from a sorted array, a heap of replica events, autoscaler ticks.

The gateway part runs pdserve's route decision (`decide_route`) on every request and pdserve's
endpoint picker (`pick`) over each pool's ready replicas: all of them up to `picker_all_up_to`,
beyond that a random sample of `picker_sample` (the power of two choices, as Ray Serve's router
does), so a request costs the same in a 1,000-replica pool as in a small one. Like pdserve's
gateway, it holds a request only while its pool has no ready replica (`hold_at_capacity` is a
what-if that also holds at a per-replica cap). The autoscaler part calls
a `Scaler` every `interval_s` with the same `PoolSnapshot` the gateway builds.

A disaggregated request's decode replica is picked when its KV has arrived (prefill end plus
`kv_transfer_seconds`); the real gateway picks it when the prefill answers, one transfer earlier.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.sim.replicas import (
    DecodeReplica,
    Ledger,
    PrefillReplica,
    ReplicaLife,
    kv_capacity_tokens,
)
from bench.workload import Requests
from pdserve import hardware
from pdserve.hardware import ModelCost
from pdserve.policies.picking import PickerState, pick
from pdserve.policies.routing import decide_route
from pdserve.policies.types import RoutingSnapshot
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Profile, Role

_WAKE, _KV, _READY, _TICK = 0, 1, 2, 3


@dataclass(frozen=True)
class ColdStart:
    """A new replica's start: a node, the serving image, then the weights from a local cache."""

    provision_s: float = 60.0
    image_s: float = 30.0
    weights_bytes_per_s: float = 2e9  # local NVMe model cache

    def seconds(self, model: ModelCost) -> float:
        return self.provision_s + self.image_s + model.weight_bytes / self.weights_bytes_per_s


@dataclass(frozen=True)
class SimConfig:
    profile: Profile
    model: ModelCost
    cold_start: ColdStart = ColdStart()
    picker_all_up_to: int = 8  # pools this small offer the picker every ready replica,
    picker_sample: int = 2  # larger ones a random sample of this many (power of two choices)
    tail_s: float = 900.0  # simulate at most this long after the last arrival
    seed: int = 0
    # A what-if pdserve's gateway does not do: hold a request at the gateway when the picked
    # decode replica already has this many requests, and hand it to the first replica that
    # frees a slot (None: send it anyway, as the gateway does, and it waits inside vLLM).
    hold_at_capacity: int | None = None


@dataclass
class PoolState:
    """One pool of the simulated cluster, as the gateway and the autoscaler see it."""

    name: str
    spec: PoolSpec
    acc: hardware.Accelerator
    ready: list = field(default_factory=list)  # replicas taking work
    starting: list = field(default_factory=list)
    draining: list = field(default_factory=list)
    lives: list[ReplicaLife] = field(default_factory=list)  # every replica ever launched
    held: deque = field(default_factory=deque)  # (arrival time, request) held at the gateway
    picker: PickerState = field(default_factory=PickerState)
    step_cache: dict = field(default_factory=dict)  # decode step times, shared by replicas
    prefill_rate: float | None = None  # tokens/s of one replica, once computed
    arrivals: int = 0  # requests sent to this pool since the last tick
    busy_mark: float = 0.0  # replicas' busy seconds at the last tick

    @property
    def role(self) -> Role:
        return self.spec.role

    @property
    def replicas(self) -> list:
        return self.ready + self.starting + self.draining


@dataclass
class TickView:
    """Extra signals for baseline scalers: utilisation and request rate over the last tick."""

    utilization: float
    qps: float


Scaler = Callable[[PoolState, PoolSnapshot, TickView], tuple[int, str]]


@dataclass
class Timeline:
    rows: list[tuple[float, str, int, int, int]] = field(default_factory=list)  # t, pool, r/s/d


class Cluster:
    """A simulated cluster running one profile over one request array with one scaler."""

    def __init__(self, config: SimConfig, requests: Requests, scaler: Scaler) -> None:
        self.config, self.requests, self.scaler = config, requests, scaler
        self.profile, self.model = config.profile, config.model
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
        engine = self.profile.engine
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

    def _push(self, when: float, kind: int, obj: object) -> None:
        heapq.heappush(self.heap, (when, next(self.counter), kind, obj))

    def _reschedule(self, replica: DecodeReplica) -> None:
        when = replica.next_event()
        if when < replica.wake_at:
            replica.wake_at = when
            self._push(when, _WAKE, replica)

    # -- the gateway ---------------------------------------------------------------------------
    def _pick(self, pool: PoolState, now: float) -> Any:
        ready = pool.ready
        if len(ready) <= self.config.picker_all_up_to:
            candidates = ready
        else:
            draw, n = self.rng.random, len(ready)
            candidates = [ready[int(draw() * n)] for _ in range(self.config.picker_sample)]
        if pool.role is Role.prefill:
            loads = [r.load(now) for r in candidates]
        else:
            loads = [r.load() for r in candidates]
        routing = self.profile.routing
        chosen, pool.picker = pick(
            routing.picker, loads, pool.picker, None, routing.prefix_affinity_load_cap
        )
        return next(r for r in candidates if r.life.id == chosen)

    def _prefill_backlog(self, now: float) -> int:
        backlog = self.backlog
        while backlog and backlog[0][0] <= now:
            self.backlog_tokens -= heapq.heappop(backlog)[1]
        return self.backlog_tokens

    def _arrive(self, now: float, idx: int) -> None:
        prefill = self.prefill
        snapshot = RoutingSnapshot(
            prefill_ready=len(prefill.ready) if prefill else 0,
            prefill_backlog_tokens=self._prefill_backlog(now) if prefill else 0,
            prefill_tokens_per_s=self._prefill_rate(prefill) if prefill else 1.0,
            local_ready=len(self.decode.ready),
            local_backlog_tokens=self.ledger.local_prefill_tokens,
            local_tokens_per_s=self._prefill_rate(self.decode),
        )
        decision = decide_route(self.profile, self.prompt[idx], snapshot)
        if decision.route == "disaggregated" and prefill is not None:
            prefill.arrivals += 1
            self._to_prefill(now, idx, prefill)
        else:
            self.decode.arrivals += 1
            self._to_decode(now, idx, local=True)

    def _prefill_rate(self, pool: PoolState) -> float:
        """The prefill throughput the gateway would have measured: an 1,800-token prompt."""
        if pool.prefill_rate is None:
            pool.prefill_rate = 1800 / hardware.prefill_step_seconds(pool.acc, self.model, 1800)
        return pool.prefill_rate

    def _hold(self, now: float, pool: PoolState, idx: int, local: bool) -> None:
        if len(pool.held) >= self.profile.gateway.max_queued_per_pool:
            self._drop(idx, "429 over capacity")
        else:
            pool.held.append((now, idx, local))

    def _to_prefill(self, now: float, idx: int, pool: PoolState) -> None:
        if not pool.ready:
            self._hold(now, pool, idx, True)
            return
        replica = self._pick(pool, now)
        prompt = self.prompt[idx]
        finish = replica.assign(now, prompt)
        heapq.heappush(self.backlog, (finish, prompt))
        self.backlog_tokens += prompt
        self.ledger.route_disagg[idx] = True
        kv_bytes = prompt * self.model.kv_bytes_per_token
        transfer = hardware.kv_transfer_seconds(pool.acc, self.decode.acc, kv_bytes)
        self._push(finish + transfer, _KV, idx)

    def _to_decode(self, now: float, idx: int, local: bool) -> None:
        pool = self.decode
        if not pool.ready:
            self._hold(now, pool, idx, local)
            return
        replica = self._pick(pool, now)
        cap = self.config.hold_at_capacity
        if cap is not None and replica.running_and_queued() >= cap:
            self._hold(now, pool, idx, local)
            return
        replica.offer(now, idx, self.prompt[idx], self.output[idx], local)
        self._reschedule(replica)

    def _release_held(self, now: float, replica: DecodeReplica) -> None:
        """hold_at_capacity: a replica that freed slots takes held requests, oldest first."""
        pool, cap = self.decode, self.config.hold_at_capacity
        if cap is None or replica.life.draining or replica.life.ready_at > now:
            return
        while pool.held and replica.running_and_queued() < cap:
            _, idx, local = pool.held.popleft()
            replica.offer(now, idx, self.prompt[idx], self.output[idx], local)

    def _drop(self, idx: int, why: str) -> None:
        self.ledger.dropped[idx] = why
        self.ledger.done += 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        arrival, n = self.arrival, len(self.arrival)
        heap, ledger = self.heap, self.ledger
        end = (arrival[-1] if n else 0.0) + self.config.tail_s
        self._push(0.0, _TICK, None)
        i = 0
        while True:
            next_event = heap[0][0] if heap else math.inf
            if i < n and arrival[i] <= next_event:
                self.now = arrival[i]
                self._arrive(self.now, i)
                i += 1
                continue
            if next_event > end or ledger.done >= n and i >= n:
                break
            now, _, kind, obj = heapq.heappop(heap)
            self.now = now
            if kind == _WAKE:
                if obj.wake_at == now:  # type: ignore[attr-defined]
                    obj.wake(now)  # type: ignore[attr-defined]
                    if self.decode.held:
                        self._release_held(now, obj)  # type: ignore[arg-type]
                    self._reschedule(obj)  # type: ignore[arg-type]
            elif kind == _KV:
                self._to_decode(now, obj, local=False)  # type: ignore[arg-type]
            elif kind == _READY:
                self._ready(now, obj)
            else:
                self._tick(now)
        return self._finish(end)

    def _ready(self, now: float, replica: object) -> None:
        life: ReplicaLife = replica.life  # type: ignore[attr-defined]
        pool = self.pools[life.pool]
        if life.removed_at is not None:
            return
        pool.starting.remove(replica)
        pool.ready.append(replica)
        held, pool.held = pool.held, deque()
        for _, idx, local in held:
            if pool is self.decode:
                self._to_decode(now, idx, local)
            else:
                self._to_prefill(now, idx, pool)

    def _tick(self, now: float) -> None:
        for pool in self.pools.values():
            self._expire_held(now, pool)
            self._retire_drained(now, pool)
            snapshot, view = self._observe(now, pool)
            desired, _reason = self.scaler(pool, snapshot, view)
            self._scale(now, pool, desired)
            self.timeline.rows.append(
                (now, pool.name, len(pool.ready), len(pool.starting), len(pool.draining))
            )
        interval = min(p.spec.scaling.interval_s for p in self.pools.values())
        self._push(now + interval, _TICK, None)

    def _expire_held(self, now: float, pool: PoolState) -> None:
        timeout = self.profile.gateway.queue_timeout_s
        while pool.held and now - pool.held[0][0] > timeout:
            self._drop(pool.held.popleft()[1], "503 held past queue timeout")

    def _retire_drained(self, now: float, pool: PoolState) -> None:
        for replica in list(pool.draining):
            idle = replica.idle(now) if pool.role is Role.prefill else replica.idle()
            if idle:
                pool.draining.remove(replica)
                replica.life.removed_at = now

    def _observe(self, now: float, pool: PoolState) -> tuple[PoolSnapshot, TickView]:
        running = waiting = 0
        kv_max = busy = 0.0
        queued_tokens = sum(self.prompt[idx] for _, idx, _ in pool.held)
        serving = pool.ready + pool.draining
        for replica in serving:
            if pool.role is Role.prefill:
                load = replica.load(now)
                busy_now = replica.busy_seconds(now)
            else:
                replica.advance(now)
                busy_now = replica.busy_s
                kv_max = max(kv_max, replica.kv_usage())
                queued_tokens += replica.queued_prompt_tokens()
                running += len(replica.running)
                waiting += replica.queued()
                busy += busy_now - replica.busy_mark
                replica.busy_mark = busy_now
                continue
            running += load.running
            waiting += load.waiting
            busy += busy_now - replica.busy_mark
            replica.busy_mark = busy_now
        rate = None
        if pool.role is Role.prefill:
            queued_tokens += self._prefill_backlog(now)
            rate = self._prefill_rate(pool)
        snapshot = PoolSnapshot(
            pool=pool.name,
            now=now,
            ready=len(pool.ready),
            starting=len(pool.starting),
            draining=len(pool.draining),
            queued_requests=len(pool.held),
            queued_prompt_tokens=queued_tokens,
            running=running,
            waiting=waiting,
            inflight=running + waiting,
            kv_usage_max=kv_max,
            prefill_tokens_per_s=rate,
        )
        interval = min(p.spec.scaling.interval_s for p in self.pools.values())
        view = TickView(
            utilization=min(1.0, busy / (interval * max(1, len(serving)))),
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
                self._push(ready_at, _READY, replica)
            return
        excess = current - desired
        while excess and pool.starting:
            pool.starting.pop().life.removed_at = now
            excess -= 1
        if excess:
            if pool.role is Role.prefill:
                pool.ready.sort(key=lambda r: r.load(now).load)
            else:
                pool.ready.sort(key=lambda r: r.load().load)
            victims, pool.ready = pool.ready[:excess], pool.ready[excess:]
            for victim in victims:
                victim.life.draining = True
            pool.draining.extend(victims)
            self._retire_drained(now, pool)

    def _finish(self, end: float) -> SimResult:
        horizon = min(end, max(self.now, self.arrival[-1] if self.arrival else 0.0))
        for idx, finish in enumerate(self.ledger.finish):
            if math.isnan(finish) and self.ledger.dropped[idx] is None:
                self._drop(idx, "unfinished at the end of the simulation")
        lives = [life for pool in self.pools.values() for life in pool.lives]
        return SimResult(self.requests, self.ledger, lives, self.timeline, horizon)


@dataclass
class SimResult:
    requests: Requests
    ledger: Ledger
    lives: list[ReplicaLife]
    timeline: Timeline
    horizon_s: float  # replicas still up are billed until here


def simulate(config: SimConfig, requests: Requests, scaler: Scaler) -> SimResult:
    """Run `requests` through a cluster shaped by `config.profile` under `scaler`."""
    return Cluster(config, requests, scaler).run()
