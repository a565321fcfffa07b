"""The gateway's view of prefill work: service-time rate samples, the decode pool's own local
prefills, and the routing snapshot built from both pools."""

from __future__ import annotations

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.upstream import Upstream
from pdserve.pools.manager import PoolManager
from pdserve.pools.replica import Replica
from pdserve.profile import Profile
from tests.support.gateway import running_app, until


def _profile() -> Profile:
    return Profile.model_validate(
        {
            "name": "p",
            "engine": {"kind": "sim"},
            "routing": {"mode": "disaggregated", "prefill_threshold": 256},
            "pools": {
                "prefill": {"role": "prefill", "scaling": {"prefill_tokens_per_s": 300}},
                "decode": {"role": "decode", "scaling": {"prefill_tokens_per_s": 200}},
            },
        }
    )


class NoActuator:
    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        return []

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        return None

    async def close(self) -> None:
        return None


def _ready(manager: PoolManager, pool: str, replica_id: str) -> Replica:
    replica = Replica(handle=ReplicaHandle(replica_id, pool, f"http://{replica_id}"))
    replica.observe_health(True)
    manager.pools[pool].replicas[replica_id] = replica
    return replica


def _manager(profile: Profile, client: Upstream) -> PoolManager:
    manager = PoolManager(profile, NoActuator(), client)
    for name in profile.pools:
        manager.pools[name] = manager.new_pool(profile, name)
    return manager


@pytest.mark.unit
async def test_queueing_behind_another_prompt_does_not_read_as_a_slow_replica() -> None:
    profile = _profile()
    async with Upstream() as client:
        manager = _manager(profile, client)
        pool = manager.pools["prefill"]
        replica = _ready(manager, "prefill", "p1")
        # two 1,800-token prompts sent together at t=0, first tokens at 6 s and 12 s:
        # each took 6 s of the replica (300 tok/s), not 6 s and 12 s
        pool.observe_prefill(replica, 1800, sent=0.0, now=6.0)
        pool.observe_prefill(replica, 1800, sent=0.0, now=12.0)
        assert pool.prefill_tokens_per_s == pytest.approx(300.0)
        # an idle gap, then one more: measured from its own send
        pool.observe_prefill(replica, 900, sent=20.0, now=23.0)
        assert pool.prefill_tokens_per_s == pytest.approx(300.0)
        # two answers delivered in one burst (the API server was starved while the model ran):
        # 12 s then ~0 s of service for 3,600 tokens is still about 300 tok/s, not 1.8 M
        pool.observe_prefill(replica, 1800, sent=30.0, now=42.0)
        pool.observe_prefill(replica, 1800, sent=30.0, now=42.001)
        assert pool.prefill_tokens_per_s == pytest.approx(300.0, rel=0.01)


@pytest.mark.unit
async def test_routing_snapshot_counts_the_decode_pools_own_prefills() -> None:
    profile = _profile()
    async with Upstream() as client:
        manager = _manager(profile, client)
        _ready(manager, "prefill", "p1")
        decode = [_ready(manager, "decode", f"d{i}") for i in range(2)]
        manager.begin_local_prefill(decode[0], 1800)
        manager.begin_local_prefill(decode[1], 600)
        snap = manager.routing_snapshot(profile, now=0.0)
        assert (snap.prefill_ready, snap.prefill_tokens_per_s) == (1, 300)  # configured
        assert (snap.local_ready, snap.local_backlog_tokens) == (2, 2400)
        assert snap.local_tokens_per_s == 200
        # first token of the 1,800-token prompt after 6 s: 300 tok/s measured on decode
        manager.end_local_prefill("decode", decode[0], 1800, sent=10.0, now=16.0)
        # a failed attempt: its tokens leave the backlog, no rate sample
        manager.end_local_prefill("decode", decode[1], 600, sent=None, now=17.0)
        snap = manager.routing_snapshot(profile, now=17.0)
        assert snap.local_backlog_tokens == 0
        assert snap.local_tokens_per_s == pytest.approx(300.0)
        # prompts under the routing threshold are no rate samples (a step, not a prefill)
        manager.begin_local_prefill(decode[1], 100)
        manager.end_local_prefill("decode", decode[1], 100, sent=20.0, now=20.1)
        assert manager.routing_snapshot(profile, 21.0).local_tokens_per_s == pytest.approx(300.0)


@pytest.mark.integration
async def test_local_prefills_are_counted_until_their_first_token_through_the_app() -> None:
    async with running_app("gw-standard") as (app, client):
        manager = app.state.gateway.manager
        pool = manager.pools["decode"]
        body = {"model": "tiny", "prompt": "x" * 1500, "max_tokens": 8, "temperature": 0}
        answer = await client.post("/v1/completions", json={**body, "stream": True})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-pdserve-route"] == "local"
        await until(lambda: all(r.inflight == 0 for r in pool.replicas.values()), 10)
        assert pool.prefill_tokens_per_s is not None and pool.prefill_tokens_per_s > 0
        measured = pool.prefill_tokens_per_s
        answer = await client.post("/v1/completions", json=body)  # not streamed
        assert answer.status_code == 200, answer.text
        assert all(r.local_prefill_tokens == 0 for r in pool.replicas.values())
        assert pool.prefill_tokens_per_s == measured  # a whole answer is no prefill sample


@pytest.mark.unit
async def test_the_prefill_backlog_is_what_the_replica_has_not_done_yet() -> None:
    profile = _profile()  # prefill pool: 300 tok/s configured
    clock = {"now": 100.0}
    async with Upstream() as client:
        manager = PoolManager(profile, NoActuator(), client, clock=lambda: clock["now"])
        for name in profile.pools:
            manager.pools[name] = manager.new_pool(profile, name)
        replica = _ready(manager, "prefill", "p1")
        await manager.acquire("prefill", prompt_tokens=1800)  # starts at t=100
        clock["now"] = 101.0
        await manager.acquire("prefill", prompt_tokens=1800)  # queued behind it
        assert replica.busy_since == 100.0
        # 3 s in: 3600 - 3 x 300 = 2700 tokens left
        assert manager.routing_snapshot(profile, 103.0).prefill_backlog_tokens == 2700
        # the first one's first token at 106; 1 s later: 1800 - 300 = 1500
        manager.pools["prefill"].observe_prefill(replica, 1800, sent=100.0, now=106.0)
        manager.release(replica, 1800)
        assert manager.routing_snapshot(profile, 107.0).prefill_backlog_tokens == 1500
        # long overdue: nothing is counted as left, never below zero
        assert manager.routing_snapshot(profile, 200.0).prefill_backlog_tokens == 0
