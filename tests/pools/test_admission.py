"""The gateway's admission unit over an in-memory actuator: a replica takes at most its capacity,
a finishing request hands its slot to the head of the queue at once (priority, FIFO within),
newcomers do not jump the queue, a long prompt prefilled locally while the prefill pool is cold
counts toward that pool's demand and moves to it once it has room, a pool that cannot start a
replica is not held for, and a request that cannot start within its deadline is refused."""

from __future__ import annotations

import asyncio

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.pools.manager import NoReplica, PoolManager, Refused
from pdserve.pools.replica import Replica
from pdserve.profile import Profile
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile

pytestmark = pytest.mark.unit


class SomeProbes(Probes):
    """Probes under which only the replicas whose URL is in `healthy_urls` are healthy."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy_urls: set[str] = set()

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        base = url.rsplit("/", 1)[0]
        if self.healthy or base in self.healthy_urls:
            return 200, b"vllm:num_requests_running 0\n" if url.endswith("/metrics") else b""
        return 503, b""


class FixedActuator(MemoryActuator):
    """Replicas that exist but cannot be added to (like static endpoints)."""

    scales = False


def _disaggregated(cold_local: bool = True) -> Profile:
    return Profile.model_validate(
        {
            "name": "d",
            "engine": {"kind": "sim"},
            "routing": {
                "mode": "disaggregated",
                "prefill_threshold": 100,
                "local_prefill_when_cold": cold_local,
            },
            "pools": {
                "prefill": {"role": "prefill", "replicas": {"min": 0, "max": 2, "initial": 0}},
                "decode": {
                    "role": "decode",
                    "replicas": {"min": 1, "max": 1},
                    "admission": {"max_inflight_per_replica": 1},
                },
            },
            "gateway": {"queue_timeout_s": 5},
        }
    )


async def _started(profile: Profile, actuator: MemoryActuator, probes: Probes) -> PoolManager:
    manager = PoolManager(profile, actuator, probes)
    await manager.start()
    return manager


async def test_a_replica_takes_its_target_and_a_release_hands_the_slot_on_at_once() -> None:
    profile = one_pool_profile()  # both pool, 1 to 4 replicas: the target binds while it can grow
    profile.pools["decode"].scaling.target_concurrency = 2
    probes = Probes()
    probes.healthy = True
    manager = await _started(profile, MemoryActuator(), probes)
    try:
        first = await manager.acquire("decode")
        second = await manager.acquire("decode")
        assert first is second and first.inflight == 2  # one replica, target 2
        third = asyncio.create_task(manager.acquire("decode", prompt_tokens=5))
        await asyncio.sleep(0.05)
        assert not third.done()
        assert manager.snapshot("decode", 0).queued_requests == 1
        manager.release(first)  # no refresh round: the slot is handed over in this call
        assert manager.snapshot("decode", 0).queued_requests == 0 and first.inflight == 2
        assert (await asyncio.wait_for(third, 1)) is first
    finally:
        await manager.close()


async def test_held_requests_leave_by_priority_then_arrival_and_newcomers_queue_behind() -> None:
    profile = one_pool_profile()
    profile.pools["decode"].admission.max_inflight_per_replica = 1
    probes = Probes()
    probes.healthy = True
    manager = await _started(profile, MemoryActuator(), probes)
    try:
        busy = await manager.acquire("decode")
        order: list[str] = []

        async def request(name: str, priority: int) -> None:
            replica = await manager.acquire("decode", priority=priority)
            order.append(name)
            await asyncio.sleep(0.01)
            manager.release(replica)

        names = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]
        tasks = []
        for name, priority in names:
            tasks.append(asyncio.create_task(request(name, priority)))
            await asyncio.sleep(0.01)  # arrive in this order
        assert manager.snapshot("decode", 0).queued_requests == 5
        manager.release(busy)
        late = asyncio.create_task(request("late", 0))  # same priority as a and c: behind them
        await asyncio.wait_for(asyncio.gather(*tasks, late), 5)
        assert order == ["e", "b", "d", "a", "c", "late"]
    finally:
        await manager.close()


async def test_a_cold_prefill_pools_long_prompt_counts_toward_it_and_wakes_it() -> None:
    actuator, probes = MemoryActuator(), SomeProbes()
    manager = await _started(_disaggregated(), actuator, probes)
    try:
        probes.healthy_urls = {h.url for h in await actuator.replicas("decode")}
        await manager.refresh()
        manager.demand.clear()
        ticket = manager.ticket(manager.profile, prompt_tokens=700)
        placed = await manager.place(ticket)
        # prefilled locally (the pool is cold), counted toward the prefill pool all the same
        assert placed.route == "local" and placed.pool == "decode"
        snap = manager.snapshot("prefill", 0)
        assert (snap.diverted_requests, snap.queued_prompt_tokens, snap.wanted) == (1, 700, 1)
        assert manager.demand.is_set()  # the autoscaler wakes for a pool at zero
        metrics = GatewayMetrics()
        metrics.export_pools(manager)  # the KEDA signal sees it too
        assert (
            'pdserve_pool_queued_prompt_tokens{pool="prefill"} 700.0' in metrics.render().decode()
        )
        manager.settle(ticket)
        manager.release(placed.replica, 700)
        assert manager.snapshot("prefill", 0).queued_prompt_tokens == 0
        short = manager.ticket(manager.profile, prompt_tokens=50)
        placed = await manager.place(short)  # below the threshold: decode's demand only
        assert manager.snapshot("prefill", 0).wanted == 0
        manager.release(placed.replica, 50)
    finally:
        await manager.close()


async def test_a_long_prompt_held_for_local_prefill_goes_to_the_prefill_pool_once_it_has_room() -> (
    None
):
    actuator, probes = MemoryActuator(), SomeProbes()
    manager = await _started(_disaggregated(), actuator, probes)
    try:
        probes.healthy_urls = {h.url for h in await actuator.replicas("decode")}
        await manager.refresh()
        chat = await manager.acquire("decode")  # the decode replica's one slot is taken
        ticket = manager.ticket(manager.profile, prompt_tokens=700)
        waiting = asyncio.create_task(manager.place(ticket))
        await asyncio.sleep(0.05)
        assert manager.snapshot("decode", 0).queued_requests == 1
        assert manager.snapshot("prefill", 0).diverted_requests == 1
        await actuator.scale("prefill", 1, [])  # what the autoscaler would do
        probes.healthy_urls |= {h.url for h in await actuator.replicas("prefill")}
        await manager.refresh()  # the prefill replica is ready: it takes the held prompt
        placed = await asyncio.wait_for(waiting, 2)
        assert (placed.route, placed.pool, ticket.route) == (
            "disaggregated",
            "prefill",
            placed.route,
        )
        assert manager.snapshot("prefill", 0).diverted_requests == 0  # counted in flight now
        assert manager.snapshot("prefill", 0).queued_prompt_tokens == 700
        manager.release(placed.replica, 700)
        manager.release(chat)
    finally:
        await manager.close()


async def _one_failed_replica(manager: PoolManager, pool: str) -> Replica:
    replica = next(iter(manager.pools[pool].replicas.values()))
    replica.observe_health(True)
    replica.eject()
    replica.observe_health(False)  # was healthy, now fails its probes: nothing ready or starting
    return replica


async def test_a_pool_that_cannot_start_a_replica_is_failed_over_not_held() -> None:
    profile = _disaggregated(cold_local=False)
    profile.pools["prefill"].replicas.initial = 1
    profile.pools["prefill"].replicas.max = 1
    actuator, probes = FixedActuator(), SomeProbes()
    manager = await _started(profile, actuator, probes)
    try:
        probes.healthy_urls = {h.url for h in await actuator.replicas("decode")}
        await manager.refresh()
        await _one_failed_replica(manager, "prefill")
        started = asyncio.get_running_loop().time()
        placed = await asyncio.wait_for(
            manager.place(manager.ticket(manager.profile, prompt_tokens=700)), 1
        )
        assert placed.route == "local"  # at once, not after the 5 s hold timeout
        assert asyncio.get_running_loop().time() - started < 0.5
        manager.release(placed.replica, 700)
        # a decode pool that cannot serve fails at once too (503), rather than holding
        probes.healthy_urls = set()
        await _one_failed_replica(manager, "decode")
        with pytest.raises(NoReplica):
            await asyncio.wait_for(manager.acquire("decode"), 1)
    finally:
        await manager.close()


async def test_a_replica_ejected_by_one_failed_request_is_not_broken_until_a_probe_says_so() -> (
    None
):
    # A decode worker killed mid-stream is ejected at once; whether it is gone (and being
    # replaced) or was only failing that request, the next probe says. Until then a new request
    # waits for it rather than getting a 503.
    profile = _disaggregated(cold_local=False)
    actuator, probes = FixedActuator(), SomeProbes()
    manager = await _started(profile, actuator, probes)
    try:
        probes.healthy_urls = {h.url for h in await actuator.replicas("decode")}
        await manager.refresh()
        replica = next(iter(manager.pools["decode"].replicas.values()))
        manager.eject(replica)
        waiting = asyncio.create_task(manager.acquire("decode"))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # held, not refused: the failure is not confirmed yet
        await manager.refresh()  # the probe finds the worker healthy again
        assert await asyncio.wait_for(waiting, 1) is replica
        manager.release(replica)
    finally:
        await manager.close()


async def test_a_request_with_a_deadline_waits_for_an_ejected_replica_too() -> None:
    # The same gap with a deadline (the gateway's start deadline): an ejected worker that may be
    # restarting is capacity coming, so the request is held, not refused 429 as "unbounded".
    profile = _disaggregated(cold_local=False)
    actuator, probes = FixedActuator(), SomeProbes()
    manager = await _started(profile, actuator, probes)
    try:
        probes.healthy_urls = {h.url for h in await actuator.replicas("decode")}
        await manager.refresh()
        replica = next(iter(manager.pools["decode"].replicas.values()))
        manager.release(await manager.acquire("decode"))  # a service time is measured: 0/s now
        manager.eject(replica)
        ticket = manager.ticket(manager.profile, prompt_tokens=10, deadline_s=120)
        waiting = asyncio.create_task(manager.place(ticket))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await manager.refresh()
        placed = await asyncio.wait_for(waiting, 1)
        assert placed.replica is replica
        manager.release(replica, 10)
    finally:
        await manager.close()


async def test_a_request_that_cannot_start_within_its_deadline_is_refused_at_once() -> None:
    profile = one_pool_profile()
    profile.pools["decode"].replicas.max = 1  # and the actuator cannot add any
    profile.pools["decode"].admission.max_inflight_per_replica = 1
    actuator, probes = FixedActuator(), Probes()
    actuator.handles["decode"] = [ReplicaHandle("decode-1", "decode", "http://r1")]
    probes.healthy = True
    manager = await _started(profile, actuator, probes)
    try:
        # one request took 2 s of its slot: the pool frees 1 slot per 2 s
        manager.clock = lambda: 100.0
        first = await manager.acquire("decode")
        manager.clock = lambda: 102.0
        manager.release(first)
        busy = await manager.acquire("decode")
        # 0 ahead, 0 free: 1 slot needed at 1 / 2 s = 0.5 per s -> 2 s > 1 s deadline
        ticket = manager.ticket(manager.profile, prompt_tokens=1, deadline_s=1)
        with pytest.raises(Refused) as refused:
            await manager.place(ticket)
        assert refused.value.retry_after_s == pytest.approx(2.0)
        # with a 10 s deadline it is held instead, and handed the slot when `busy` finishes
        ticket = manager.ticket(manager.profile, prompt_tokens=1, deadline_s=10)
        held = asyncio.create_task(manager.place(ticket))
        await asyncio.sleep(0.05)
        assert not held.done()
        manager.release(busy)
        assert (await asyncio.wait_for(held, 1)).replica is busy
    finally:
        await manager.close()


async def test_a_started_request_is_not_refused_by_its_start_deadline_on_a_later_hop() -> None:
    profile = _disaggregated()
    profile.pools["prefill"].replicas.initial = 1
    actuator, probes = MemoryActuator(), SomeProbes()
    probes.healthy = True
    manager = await _started(profile, actuator, probes)
    try:
        chat = await manager.acquire("decode")  # the decode replica's one slot is taken
        ticket = manager.ticket(manager.profile, prompt_tokens=700, deadline_s=0.1)
        placed = await manager.place(ticket)  # started at once on the prefill pool
        assert placed.route == "disaggregated"
        manager.release(placed.replica, 700)
        decode_hop = asyncio.create_task(manager.acquire_for("decode", ticket))
        await asyncio.sleep(0.3)  # past the 0.1 s start deadline: still held, not refused
        assert not decode_hop.done()
        manager.release(chat)
        assert (await asyncio.wait_for(decode_hop, 1)) is chat
    finally:
        await manager.close()
