"""Live profile switch under load: 20 concurrent streams while standard -> disaggregated ->
standard. Every stream completes with the right tokens; nothing gets a 503 while the new
profile's pools start (requests keep the old route until they are ready)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from tests.support.gateway import gateway_profile, running_app, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STREAMS = 20
PROMPTS = ["short prompt", "Sphinx of black quartz, judge my vow. " * 5]  # 12 and 185 tokens
MAX_TOKENS = 60


def _body(prompt: str, stream: bool) -> dict[str, object]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "stream": stream}


def _streamed_text(text: str) -> str:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])


async def _load(
    client: httpx.AsyncClient, expected: dict[str, str], stop: asyncio.Event, seen: Counter[str]
) -> None:
    n = 0
    while not stop.is_set():
        prompt = PROMPTS[n % len(PROMPTS)]
        n += 1
        response = await client.post("/v1/completions", json=_body(prompt, True))
        seen[f"{response.status_code}"] += 1
        assert response.status_code == 200, response.text
        seen[response.headers["x-pdserve-route"]] += 1
        seen[response.headers["x-pdserve-profile"]] += 1
        assert _streamed_text(response.text) == expected[prompt]


async def _switch(client: httpx.AsyncClient, name: str) -> None:
    inline = gateway_profile(name).model_dump(mode="json")
    answer = await client.put("/admin/profile", json={"profile": inline})
    assert answer.status_code == 202, answer.text
    assert answer.json()["pending"] == name

    async def active() -> bool:
        state = (await client.get("/admin/profile")).json()
        return bool(state["active"] == name and state["pending"] is None)

    async with asyncio.timeout(90):
        while True:
            if await active():
                return
            await asyncio.sleep(0.1)


async def test_switch_standard_disaggregated_standard_under_load() -> None:
    async with running_app("gw-switch-standard") as (app, client):
        expected = {}
        for prompt in PROMPTS:
            answer = await client.post("/v1/completions", json=_body(prompt, False))
            expected[prompt] = answer.json()["choices"][0]["text"]
        stop, seen = asyncio.Event(), Counter[str]()
        load = [asyncio.create_task(_load(client, expected, stop, seen)) for _ in range(STREAMS)]
        await asyncio.sleep(1)
        await _switch(client, "gw-switch-disaggregated")
        await asyncio.sleep(2)
        await _switch(client, "gw-switch-standard")
        await asyncio.sleep(1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 60)
        assert set(seen) >= {"200", "gw-switch-standard", "gw-switch-disaggregated"}
        assert seen["disaggregated"] > 0 and seen["local"] > 0
        assert seen["200"] >= 2 * STREAMS
        manager = app.state.gateway.manager
        # the prefill pool was drained and removed; the decode pool is back to one replica
        await until(lambda: set(manager.pools) == {"decode"}, 30)
        await until(lambda: len(manager.pools["decode"].replicas) == 1, 30)
        assert len(manager.actuator.pids()) == 1


async def test_switch_reuses_pools_whose_worker_spec_is_unchanged() -> None:
    async with running_app("gw-disaggregated") as (app, client):
        manager = app.state.gateway.manager
        before = {name: set(pool.replicas) for name, pool in manager.pools.items()}
        pids = sorted(manager.actuator.pids())
        new = gateway_profile("gw-disaggregated").model_dump(mode="json")
        new["name"] = "gw-disaggregated-tuned"
        new["routing"]["prefill_threshold"] = 4096  # routing and scaling: no restart needed
        new["pools"]["decode"]["scaling"]["target_concurrency"] = 3
        answer = await client.put("/admin/profile", json={"profile": new})
        assert answer.status_code == 202, answer.text
        assert answer.json()["active"] == "gw-disaggregated-tuned"  # nothing had to start
        long = await client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "x" * 300, "max_tokens": 2}
        )
        assert long.headers["x-pdserve-route"] == "local"  # 300 < the new threshold 4096
        assert long.headers["x-pdserve-profile"] == "gw-disaggregated-tuned"
        assert {name: set(pool.replicas) for name, pool in manager.pools.items()} == before
        assert sorted(manager.actuator.pids()) == pids


async def test_switch_back_to_a_pool_that_is_still_draining() -> None:
    async with running_app("gw-switch-slow-prefill") as (app, client):
        manager = app.state.gateway.manager
        body = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 4}
        in_prefill = asyncio.create_task(client.post("/v1/completions", json=body))
        await until(
            lambda: (
                manager.pools["prefill"].replicas
                and any(r.inflight for r in manager.pools["prefill"].replicas.values())
            ),
            10,
        )
        await _switch(client, "gw-switch-standard")
        assert manager.pools["prefill"].retiring  # its prefill is still running: draining
        await _switch(client, "gw-switch-slow-prefill")
        finished = await asyncio.wait_for(in_prefill, 30)
        assert finished.status_code == 200
        assert finished.headers["x-pdserve-route"] == "disaggregated"
        again = await client.post("/v1/completions", json=body)
        assert again.headers["x-pdserve-route"] == "disaggregated"
        assert again.json()["choices"][0]["text"] == finished.json()["choices"][0]["text"]
        await until(lambda: set(manager.pools) == {"prefill", "decode"}, 30)
        await until(lambda: len(manager.actuator.pids()) == 2, 60)


async def test_a_request_held_for_a_pool_the_switch_drops_follows_the_new_profile() -> None:
    async with running_app("gw-held-prefill") as (app, client):
        manager = app.state.gateway.manager
        body = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 8}
        held = asyncio.create_task(client.post("/v1/completions", json=body))
        await until(lambda: manager.snapshot("prefill", 0).queued_requests == 1, 10)
        started = asyncio.get_running_loop().time()
        await _switch(client, "gw-switch-standard")  # drops the prefill pool
        answer = await asyncio.wait_for(held, 30)  # well inside the 60 s hold timeout
        assert answer.status_code == 200, answer.text
        assert asyncio.get_running_loop().time() - started < 30
        assert answer.headers["x-pdserve-route"] == "local"
        assert answer.headers["x-pdserve-profile"] == "gw-switch-standard"
        again = await client.post("/v1/completions", json=body)
        assert again.json()["choices"][0]["text"] == answer.json()["choices"][0]["text"]
        await until(lambda: set(manager.pools) == {"decode"}, 30)
