"""Admission with two served models over an in-memory actuator: a request is routed by its own
model's threshold to that model's pools, and a long prompt of the second model held for local
prefill on its decode pool moves to its own prefill pool once that has room."""

from __future__ import annotations

import asyncio

import pytest

from pdserve.pools.manager import PoolManager
from pdserve.profile import Profile
from tests.pools.test_admission import SomeProbes
from tests.support.fakes import MemoryActuator

pytestmark = pytest.mark.unit


def _two_models() -> Profile:
    one = {"role": "decode", "replicas": {"min": 1, "max": 1}}
    cold = {"role": "prefill", "replicas": {"min": 0, "max": 1, "initial": 0}}
    return Profile.model_validate(
        {
            "name": "two",
            "engine": {"kind": "sim"},
            "model": {"name": "a"},
            "models": [{"name": "b", "routing": {"prefill_threshold": 500}}],
            "routing": {"mode": "disaggregated", "prefill_threshold": 100},
            "pools": {
                "prefill": {"role": "prefill", "replicas": {"min": 1, "max": 1}},
                "decode": one,
                "prefill-b": {**cold, "model": "b"},
                "decode-b": {**one, "model": "b", "admission": {"max_inflight_per_replica": 1}},
            },
            "gateway": {"queue_timeout_s": 5},
        }
    )


async def test_each_model_routes_by_its_own_threshold_to_its_own_pools() -> None:
    actuator, probes = MemoryActuator(), SomeProbes()
    manager = PoolManager(_two_models(), actuator, probes)
    await manager.start()
    try:
        probes.healthy = True
        await manager.refresh()
        placed = {}
        for model, tokens in (("a", 300), ("b", 300), ("b", 700)):
            view = manager.profile.for_model(model)
            assert view is not None
            ticket = manager.ticket(view, prompt_tokens=tokens)
            if model == "b" and tokens == 700:  # prefill-b is at zero: it is started for it
                await actuator.scale("prefill-b", 1, [])
                await manager.refresh()
            got = await asyncio.wait_for(manager.place(ticket), 2)
            placed[(model, tokens)] = (got.route, got.pool)
            manager.release(got.replica, tokens)
        assert placed == {
            ("a", 300): ("disaggregated", "prefill"),  # 300 >= a's 100
            ("b", 300): ("local", "decode-b"),  # 300 < b's own 500
            ("b", 700): ("disaggregated", "prefill-b"),
        }
    finally:
        await manager.close()


async def test_a_held_prompt_moves_to_its_own_models_prefill_pool_once_it_has_room() -> None:
    actuator, probes = MemoryActuator(), SomeProbes()
    manager = PoolManager(_two_models(), actuator, probes)
    await manager.start()
    try:
        probes.healthy_urls = {
            h.url
            for pool in ("prefill", "decode", "decode-b")
            for h in await actuator.replicas(pool)
        }
        await manager.refresh()
        chat = await manager.acquire("decode-b")  # decode-b's one slot is taken
        view = manager.profile.for_model("b")
        assert view is not None
        ticket = manager.ticket(view, prompt_tokens=700)
        waiting = asyncio.create_task(manager.place(ticket))
        await asyncio.sleep(0.05)
        assert manager.snapshot("decode-b", 0).queued_requests == 1
        assert manager.snapshot("prefill-b", 0).diverted_requests == 1  # b's, not a's
        assert manager.snapshot("prefill", 0).diverted_requests == 0
        await actuator.scale("prefill-b", 1, [])
        probes.healthy_urls |= {h.url for h in await actuator.replicas("prefill-b")}
        await manager.refresh()  # prefill-b is ready: it takes the prompt held on decode-b
        placed = await asyncio.wait_for(waiting, 2)
        assert (placed.route, placed.pool) == ("disaggregated", "prefill-b")
        manager.release(placed.replica, 700)
        manager.release(chat)
    finally:
        await manager.close()
