"""Pure pieces of the pools and the gateway: replica state, metrics parsing, hold queue, auth,
body validation, worker spec keys, and the pool manager over an in-memory actuator."""

from __future__ import annotations

import asyncio

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.auth import AuthConfig, client_priority
from pdserve.gateway.errors import OpenAIError
from pdserve.gateway.requests import parse_body
from pdserve.policies.types import ScaleDecision
from pdserve.pools.hold import HoldQueue, Overloaded
from pdserve.pools.manager import NoReplica, PoolDropped, PoolManager
from pdserve.pools.replica import Replica, ReplicaState, parse_worker_metrics, replica_state
from pdserve.pools.workerspec import worker_spec_key
from pdserve.profile import Profile

pytestmark = pytest.mark.unit


def _replica(**observed: object) -> Replica:
    replica = Replica(handle=ReplicaHandle("r1", "decode", "http://127.0.0.1:1"))
    for key, value in observed.items():
        setattr(replica, key, value)
    return replica


STATES = [
    ({}, ReplicaState.starting),  # launched, never healthy
    ({"healthy": True, "ever_healthy": True}, ReplicaState.ready),
    ({"healthy": False, "ever_healthy": True}, ReplicaState.failed),  # ejected or probe failed
    ({"healthy": True, "ever_healthy": True, "draining": True}, ReplicaState.draining),
    ({"healthy": True, "ever_healthy": True, "alive": False}, ReplicaState.failed),
    ({"alive": False, "draining": True}, ReplicaState.failed),  # a dead process is dead
]


@pytest.mark.parametrize(("observed", "state"), STATES)
def test_replica_state(observed: dict[str, object], state: ReplicaState) -> None:
    assert replica_state(_replica(**observed)) is state


def test_eject_then_healthy_probe_readmits() -> None:
    replica = _replica()
    replica.observe_health(True)
    replica.eject()
    assert replica_state(replica) is ReplicaState.failed
    replica.observe_health(True)
    assert replica_state(replica) is ReplicaState.ready


METRICS_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.5
vllm:num_requests_running_other 99
vllm:prompt_tokens_total{model_name="tiny"} 1234.0
"""


def test_parse_worker_metrics_sums_engines_and_takes_max_kv() -> None:
    # running 3 + 2 = 5; kv max(0.25, 0.5) = 0.5; unrelated series ignored
    assert parse_worker_metrics(METRICS_TEXT) == {"running": 5.0, "waiting": 4.0, "kv_usage": 0.5}


async def test_hold_queue_sheds_lowest_priority_first() -> None:
    queue = HoldQueue(limit=2)
    low = queue.hold(priority=0, tokens=10)
    high = queue.hold(priority=5, tokens=20)
    assert queue.tokens == 30
    newcomer = queue.hold(priority=3, tokens=5)  # full: sheds `low` (priority 0 < 3)
    with pytest.raises(Overloaded):
        low.future.result()
    with pytest.raises(Overloaded):
        queue.hold(priority=3, tokens=1)  # lowest held is 3, not below 3: refused
    assert len(queue) == 2
    order: list[int] = []
    for held in (newcomer, high):
        held.future.add_done_callback(lambda _f, p=held.priority: order.append(p))
    queue.release_all()
    await asyncio.sleep(0)
    assert order == [5, 3]  # higher priority released first
    assert len(queue) == 0


def test_hold_queue_with_no_room_refuses() -> None:
    async def run() -> None:
        with pytest.raises(Overloaded):
            HoldQueue(limit=0).hold(priority=9, tokens=1)

    asyncio.run(run())


def test_api_keys_and_priorities() -> None:
    auth = AuthConfig.from_env({"PDSERVE_API_KEYS": "alpha:5, beta", "PDSERVE_ADMIN_TOKEN": "t"})
    assert auth.api_keys == {"alpha": 5, "beta": 0}
    assert client_priority(auth, "Bearer alpha", None) == 5
    assert client_priority(auth, "Bearer beta", "9") == 0  # with keys, the key decides
    for header in (None, "Bearer wrong", "Basic alpha"):
        with pytest.raises(OpenAIError) as caught:
            client_priority(auth, header, None)
        assert caught.value.status == 401
    open_auth = AuthConfig.from_env({})
    assert client_priority(open_auth, None, "7") == 7


BAD_BODIES = [
    (b"{not json", False, None),
    (b"[1, 2]", False, None),
    (b'{"model": "tiny"}', False, "prompt"),
    (b'{"model": 3, "prompt": "x"}', False, "model"),
    (b'{"model": "tiny", "prompt": "x", "max_tokens": -1}', False, "max_tokens"),
    (b'{"model": "tiny", "prompt": "x", "max_tokens": "10"}', False, "max_tokens"),
    (b'{"model": "tiny", "prompt": "x", "temperature": 3}', False, "temperature"),
    (b'{"model": "tiny", "prompt": "x", "stream": "yes"}', False, "stream"),
    (b'{"model": "tiny", "messages": []}', True, "messages"),
    (b'{"model": "tiny", "messages": [{"content": "x"}]}', True, "messages.0.role"),
]


@pytest.mark.parametrize(("raw", "chat", "param"), BAD_BODIES)
def test_bad_bodies_are_400_naming_the_parameter(raw: bytes, chat: bool, param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_body(raw, chat)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_good_body_passes_through_unknown_fields() -> None:
    body = parse_body(b'{"model": "tiny", "prompt": [1, 2], "ignore_eos": true}', False)
    assert body["ignore_eos"] is True


def _profile(role: str = "both", **engine: object) -> Profile:
    return Profile.model_validate(
        {
            "name": "p",
            "routing": {"mode": "standard"},
            "engine": {"kind": "sim", **engine},
            "pools": {"decode": {"role": role, "replicas": {"min": 1, "max": 4}}},
        }
    )


def test_worker_spec_key_ignores_scaling_but_not_role_or_engine() -> None:
    base = _profile()
    resized = base.model_copy(deep=True)
    resized.pools["decode"].replicas.max = 3
    resized.pools["decode"].scaling.target_concurrency = 2
    assert worker_spec_key(base, "decode") == worker_spec_key(resized, "decode")
    assert worker_spec_key(base, "decode") != worker_spec_key(_profile("decode"), "decode")
    assert worker_spec_key(base, "decode") != worker_spec_key(
        _profile(sim_time_scale=2.0), "decode"
    )


class MemoryActuator:
    """An actuator over replicas that are all reachable by one in-memory transport."""

    def __init__(self) -> None:
        self.handles: dict[str, list[ReplicaHandle]] = {}
        self.calls: list[tuple[str, int, list[str]]] = []
        self.count = 0

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        return list(self.handles.get(pool, []))

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        self.calls.append((pool, desired, list(victims)))
        members = [h for h in self.handles.get(pool, []) if h.id not in victims]
        while len(members) < desired:
            self.count += 1
            members.append(ReplicaHandle(f"{pool}-{self.count}", pool, f"http://r{self.count}"))
        self.handles[pool] = members[:desired]

    async def close(self) -> None:
        return None


class Probes:
    """The probes' HTTP client for replicas that exist only in MemoryActuator: every worker
    answers 503 until `healthy`, then 200 and idle metrics (the real client is
    tests/gateway/test_gateway_upstream.py's)."""

    def __init__(self) -> None:
        self.healthy = False

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        if not self.healthy:
            return 503, b""
        return 200, b"vllm:num_requests_running 0\n" if url.endswith("/metrics") else b""


async def test_manager_holds_until_ready_and_drains_on_scale_down() -> None:
    profile = _profile()
    profile.gateway.queue_timeout_s = 5
    profile.pools["decode"].scaling.drain_timeout_s = 2
    actuator = MemoryActuator()
    probes = Probes()
    manager = PoolManager(profile, actuator, probes)
    await manager.start()
    try:
        assert manager.snapshot("decode", 0.0).starting == 1
        waiter = asyncio.create_task(manager.acquire("decode", prompt_tokens=7))
        await asyncio.sleep(0.05)
        assert manager.demand.is_set()
        assert manager.snapshot("decode", 0.0).queued_requests == 1
        probes.healthy = True
        replica = await asyncio.wait_for(waiter, 5)
        assert replica.inflight == 1
        assert manager.snapshot("decode", 0.0).queued_prompt_tokens == 7

        up = ScaleDecision("decode", 2, 1, "test: up")
        manager.record_decision(up)
        await manager.scale_to(up)
        await manager.refresh()
        assert manager.snapshot("decode", 0.0).ready == 2
        # scale down: the idle replica is the victim, the busy one keeps serving
        down = ScaleDecision("decode", 1, 2, "test: down")
        manager.record_decision(down)
        manager.record_decision(ScaleDecision("decode", 1, 1, "test: steady"))
        await manager.scale_to(down)
        assert [r.id for r in manager.pools["decode"].replicas.values()] == [replica.id]
        assert actuator.calls[-1][2] != [replica.id]
        pool = manager.pools["decode"]
        assert [d.reason for d in pool.decisions] == ["test: up", "test: down"]  # changes
        assert pool.last_decision is not None and pool.last_decision.reason == "test: steady"
        manager.release(replica, 7)
    finally:
        await manager.close()


async def test_manager_hold_times_out_as_no_replica() -> None:
    profile = _profile()
    profile.gateway.queue_timeout_s = 0.3
    manager = PoolManager(profile, MemoryActuator(), Probes())
    await manager.start()
    try:
        with pytest.raises(NoReplica):
            await manager.acquire("decode")
    finally:
        await manager.close()


async def test_local_actuator_spreads_cores_across_pools() -> None:
    from pdserve.actuators.local import LocalActuator

    profile = Profile.model_validate(
        {
            "name": "cores",
            "engine": {"kind": "sim"},
            "pools": {
                "prefill": {"role": "prefill", "cores": [0]},
                "decode": {"role": "decode", "cores": [1, 0], "replicas": {"max": 3}},
            },
        }
    )
    actuator = LocalActuator(lambda: profile, stop_timeout_s=5)
    try:
        # `pdserve worker` processes: they start and wait; only their cores matter here
        await actuator.scale("prefill", 1, [])
        await actuator.scale("decode", 3, [])
        cores = {
            pool: sorted(r.core for r in actuator._replicas[pool].values() if r.core is not None)
            for pool in ("prefill", "decode")
        }
        # prefill takes 0; decode: 1 (free), then 0 (1 each), then 1 (list order on a tie)
        assert cores == {"prefill": [0], "decode": [0, 1, 1]}
    finally:
        await actuator.close()
    assert not actuator.pids()


async def test_a_pool_the_profile_no_longer_has_is_dropped_not_a_crash() -> None:
    manager = PoolManager(_profile(), MemoryActuator(), Probes())
    with pytest.raises(PoolDropped):  # a 503 where the caller does not re-plan
        await manager.acquire("prefill-of-an-older-profile")
    assert issubclass(PoolDropped, NoReplica)
