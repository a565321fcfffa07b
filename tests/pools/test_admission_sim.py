"""Issue 18's control loop with simulated workers (real processes, the gateway in-process, its
autoscaler running): a prefill pool at zero wakes on long prompts, a burst during a cold start
waits at the gateway rather than on the busy replica and leaves in priority order, decode and
unified pools at zero hold and wake, and a dead static prefill worker is failed over to local
prefill at once and failed back when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pdserve import profile as profiles
from pdserve.gateway.app import create_app
from pdserve.policies.admission import CapacityLimits, replica_capacity, target_binds
from pdserve.pools.manager import PoolManager
from pdserve.pools.pool import Pool
from pdserve.pools.replica import ReplicaState, replica_state
from pdserve.processes import free_port
from pdserve.profile import Profile
from tests.support.gateway import until

pytestmark = pytest.mark.integration

LONG = "x" * 7000  # the tiny model's byte tokenizer: ~7,000 tokens, above sim's 512 threshold


def long_body(i: int) -> dict[str, Any]:
    return {"model": "tiny", "prompt": f"{i} {LONG}", "max_tokens": 4}


def chat_body(i: int, tokens: int = 32) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"chat {i}"}],
        "max_tokens": tokens,
    }


@contextlib.asynccontextmanager
async def gateway(profile: Profile) -> AsyncIterator[tuple[PoolManager, httpx.AsyncClient]]:
    """The gateway app with its autoscaler, in-process; workers are local processes."""
    app = create_app(profile, env={}, autoscale=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=120) as c:
            yield app.state.gateway.manager, c


def serving_room(manager: PoolManager, pool: Pool) -> list[int]:
    """Free slots of each ready replica, by the admission capacity (pure functions) the pool's
    spec implies right now."""
    spec = pool.spec
    states = [replica_state(r) for r in pool.replicas.values()]
    ready, starting = states.count(ReplicaState.ready), states.count(ReplicaState.starting)
    binds = target_binds(ready, starting, spec.replicas.max, True)
    limits = CapacityLimits(
        spec.engine.max_num_seqs or manager.profile.engine.max_num_seqs,
        spec.scaling.target_concurrency if binds else None,
        spec.admission.max_inflight_per_replica,
        spec.scaling.kv_high_watermark,
    )
    return [
        replica_capacity(r.load(), limits).slots - r.inflight
        for r in pool.replicas.values()
        if replica_state(r) is ReplicaState.ready
    ]


@dataclass
class Watch:
    """Samples every pool every 10 ms: a request waiting (at the gateway, or over a replica's
    capacity inside it) while a sibling has room is a violation once it outlives one sample."""

    manager: PoolManager
    violations: list[str] = field(default_factory=list)
    peak_held: int = 0
    peak_ready: dict[str, int] = field(default_factory=dict)
    _last: set[str] = field(default_factory=set)

    def sample(self) -> None:
        now: set[str] = set()
        for name, pool in self.manager.pools.items():
            room = serving_room(self.manager, pool)
            self.peak_held = max(self.peak_held, len(pool.queue))
            self.peak_ready[name] = max(self.peak_ready.get(name, 0), len(room))
            over = [-r for r in room if r < 0]
            if any(r > 0 for r in room) and (len(pool.queue) or over):
                now.add(f"{name}: {len(pool.queue)} held, over capacity {over}, room {room}")
        self.violations += sorted(now & self._last)
        self._last = now

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watching(manager: PoolManager) -> AsyncIterator[Watch]:
    watch = Watch(manager)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_prefill_pool_at_zero_wakes_on_long_prompts_and_later_ones_go_disaggregated() -> (
    None
):
    profile = profiles.load("sim")  # as shipped: prefill min 0, local_prefill_when_cold
    prefill_spec = profile.pools["prefill"]
    async with gateway(profile) as (manager, client):
        prefill = manager.pools["prefill"]
        # idle: 1 -> 0 after the scale-to-zero grace (10 s)
        await until(lambda: prefill.desired == 0 and not prefill.replicas, 60)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        first = asyncio.create_task(client.post("/v1/completions", json=long_body(0)))
        await until(lambda: prefill.desired >= 1, prefill_spec.scaling.interval_s + 0.5)
        answer = await first
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-pdserve-route"] == "local"  # served while the pool was cold
        await until(lambda: manager.ready_count("prefill") >= 1, 60)
        woke_s = loop.time() - sent
        startup_s = prefill.startup_s
        assert startup_s is not None and startup_s >= prefill_spec.sim_faults.cold_start_s
        # its interval, the worker's own measured startup, one refresh round to see it ready
        bound = prefill_spec.scaling.interval_s + startup_s + 2 * profile.gateway.metrics_interval_s
        assert woke_s <= bound, (woke_s, bound)
        later = [await client.post("/v1/completions", json=long_body(i)) for i in range(1, 4)]
        assert [r.status_code for r in later] == [200] * 3
        assert [r.headers["x-pdserve-route"] for r in later] == ["disaggregated"] * 3


async def test_a_burst_during_a_cold_start_waits_at_the_gateway_and_leaves_by_priority() -> None:
    profile = profiles.load("sim")  # decode: 1 replica, target 4, up to 8, 2 s cold start
    async with gateway(profile) as (manager, client):
        await until(lambda: manager.ready_count("decode") >= 1, 60)
        decode = manager.pools["decode"]
        handed: list[tuple[tuple[int, int], tuple[int, int]]] = []
        real_hand = decode.queue.hand

        def hand(held: Any, replica: Any) -> None:
            if replica is not None:  # (the handed one's order, the best order held)
                handed.append((held.order, min(h.order for h in decode.queue.in_order())))
            real_hand(held, replica)

        decode.queue.hand = hand  # type: ignore[method-assign]

        async def send(i: int, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            headers = {"x-pdserve-priority": str(i % 3)}
            body = chat_body(i, 200)  # streams that outlive the new replicas' cold start
            return await client.post("/v1/chat/completions", json=body, headers=headers)

        # steady: 2 chats/s for 2 s; then 10x: 20 chats/s for 1.2 s (24 chats, target 4 each)
        steady = [send(i, i / 2) for i in range(4)]
        burst = [send(100 + i, 2 + i / 20) for i in range(24)]
        async with watching(manager) as watch:
            answers = await asyncio.wait_for(asyncio.gather(*steady, *burst), 120)
        assert watch.violations == []
        assert [a.status_code for a in answers] == [200] * len(answers)
        assert watch.peak_held > 0 and watch.peak_ready["decode"] > 1  # it did wait and grow
        assert handed and all(order == best for order, best in handed), handed


@pytest.mark.parametrize("role", ["decode", "both"])
async def test_a_decode_or_unified_pool_at_zero_holds_a_chat_and_wakes(role: str) -> None:
    profile = profiles.load("sim")
    if role == "both":
        profile.routing.mode = profiles.RoutingMode.standard
        del profile.pools["prefill"]
    else:  # the prefill pool at zero too: a long prompt held for decode wakes both
        profile.pools["prefill"].replicas = profiles.Replicas(min=0, max=2, initial=0)
    pool_spec = profile.pools["decode"]
    pool_spec.role = profiles.Role(role)
    pool_spec.replicas = profiles.Replicas(min=0, max=2, initial=0)
    profile = Profile.model_validate(profile.model_dump())
    async with gateway(profile) as (manager, client):
        loop = asyncio.get_running_loop()
        sent = loop.time()
        requests = [client.post("/v1/chat/completions", json=chat_body(0, 8))]
        if role == "decode":
            requests.append(client.post("/v1/completions", json=long_body(0)))
        answers = asyncio.gather(*requests)
        await until(lambda: manager.snapshot("decode", 0).queued_requests == len(requests), 5)
        for name in profile.pools:  # each pool decides at once, not at its next interval
            await until(lambda n=name: manager.pools[n].desired >= 1, 0.5)
        done = await asyncio.wait_for(answers, 60)
        assert [a.status_code for a in done] == [200] * len(done), [a.text for a in done]
        assert loop.time() - sent >= pool_spec.sim_faults.cold_start_s  # it waited for the wake
        assert done[0].json()["usage"]["completion_tokens"] == 8


def _start_worker(path: Path, pool: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pdserve.cli", "worker", "--profile", str(path)]
    command += ["--pool", pool, "--port", str(port), "--side-channel-port", str(free_port())]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def _static_profile(tmp_path: Path, ports: dict[str, int]) -> tuple[Profile, Path]:
    data = yaml.safe_load((profiles.PROFILES_DIR / "sim.yaml").read_text())
    data["routing"]["local_prefill_when_cold"] = False  # hold for a cold pool, not a dead one
    for name in ("prefill", "decode"):
        data["pools"][name]["replicas"] = {"min": 1, "max": 1}
        data["pools"][name].pop("sim_faults", None)
    endpoints = {name: [f"http://127.0.0.1:{port}"] for name, port in ports.items()}
    data["actuator"] = {"kind": "static", "static": {"endpoints": endpoints}}
    data["gateway"] = {"queue_timeout_s": 30, "metrics_interval_s": 0.2}
    path = tmp_path / "static-sim.yaml"
    path.write_text(yaml.safe_dump(data))
    return profiles.load(str(path)), path


async def test_a_dead_static_prefill_worker_is_failed_over_at_once_and_back(
    tmp_path: Path,
) -> None:
    ports = {"prefill": free_port(), "decode": free_port()}
    profile, path = _static_profile(tmp_path, ports)
    workers = {name: _start_worker(path, name, port) for name, port in ports.items()}
    try:
        async with gateway(profile) as (manager, client):
            both_ready: Callable[[], bool] = lambda: all(  # noqa: E731
                manager.ready_count(n) == 1 for n in ports
            )
            await until(both_ready, 60)
            warm = await client.post("/v1/completions", json=long_body(0))
            assert warm.headers["x-pdserve-route"] == "disaggregated"
            _stop(workers["prefill"])
            await until(lambda: manager.ready_count("prefill") == 0, 10)
            loop = asyncio.get_running_loop()
            sent = loop.time()
            answer = await client.post("/v1/completions", json=long_body(1))
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-pdserve-route"] == "local"
            assert loop.time() - sent < 5  # not held for the 30 s hold timeout
            workers["prefill"] = _start_worker(path, "prefill", ports["prefill"])
            await until(lambda: manager.ready_count("prefill") == 1, 60)
            back = await client.post("/v1/completions", json=long_body(2))
            assert back.status_code == 200, back.text
            assert back.headers["x-pdserve-route"] == "disaggregated"
    finally:
        for worker in workers.values():
            _stop(worker)
