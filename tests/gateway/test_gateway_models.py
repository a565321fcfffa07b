"""Several models behind one gateway, with simulated workers as real local processes: each
request goes to its model's own pools under its own threshold, /v1/models lists every model, an
unknown one gets OpenAI's 404, each model's pools scale on their own load, and a live switch
adds and removes a model without touching the other's replicas or losing a request."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI

from tests.support.gateway import gateway_profile, running_app, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LONG = "Sphinx of black quartz, judge my vow. " * 5  # 185 tokens: long for tiny, short for tiny-b
SHORT = "short prompt"


def _body(model: str, prompt: str, max_tokens: int = 8, stream: bool = False) -> dict[str, object]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}


def _members(app: FastAPI, pool: str) -> dict[str, str]:
    """A pool's replicas: id -> worker process id."""
    replicas = app.state.gateway.manager.pools[pool].replicas
    return {rid: r.handle.labels["pid"] for rid, r in replicas.items()}


async def test_each_model_its_pools_threshold_listing_and_404() -> None:
    async with running_app("gw-models-two", autoscale=False) as (app, client):
        listed = (await client.get("/v1/models")).json()
        assert [card["id"] for card in listed["data"]] == ["tiny", "tiny-b"]
        routes = {}
        for model in ("tiny", "tiny-b"):
            answer = await client.post("/v1/completions", json=_body(model, LONG))
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == model  # the worker serving it serves that model
            routes[model] = answer.headers["x-pdserve-route"]
        # 185 tokens: over tiny's threshold (64), under tiny-b's own (1000)
        assert routes == {"tiny": "disaggregated", "tiny-b": "local"}
        very_long = await client.post("/v1/completions", json=_body("tiny-b", LONG * 7))
        assert very_long.headers["x-pdserve-route"] == "disaggregated", very_long.text
        unknown = await client.post("/v1/completions", json=_body("nope", SHORT))
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": {
                "message": "The model `nope` does not exist or you do not have access to it.",
                "type": "not_found_error",
                "param": "model",
                "code": "model_not_found",
            }
        }


async def test_each_models_pools_scale_on_their_own_load() -> None:
    async with running_app("gw-models-two", autoscale=True) as (app, client):
        manager = app.state.gateway.manager

        async def stream() -> None:
            body = _body("tiny-b", SHORT, max_tokens=400, stream=True)
            answer = await client.post("/v1/completions", json=body)
            assert answer.status_code == 200, answer.text

        load = [asyncio.create_task(stream()) for _ in range(8)]
        # 8 streams on tiny-b's decode pool at a target of 2 a replica: it grows to its max
        await until(lambda: manager.pools["decode-b"].desired > 1, 30)
        assert manager.pools["decode"].desired == 1  # tiny's: no load of its own, no change
        assert manager.pools["decode"].last_decision is None or (
            manager.pools["decode"].last_decision.desired == 1
        )
        await asyncio.gather(*load)


async def _load(
    client: httpx.AsyncClient, stop: asyncio.Event, seen: Counter[str], expected: dict[str, str]
) -> None:
    n = 0
    while not stop.is_set():
        prompt = (SHORT, LONG)[n % 2]
        n += 1
        answer = await client.post("/v1/completions", json=_body("tiny", prompt, 40, True))
        assert answer.status_code == 200, answer.text
        events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert text == expected[prompt]
        seen[answer.headers["x-pdserve-profile"]] += 1


async def _switch(client: httpx.AsyncClient, name: str) -> None:
    inline = gateway_profile(name).model_dump(mode="json")
    answer = await client.put("/admin/profile", json={"profile": inline})
    assert answer.status_code == 202, answer.text

    async def active() -> bool:
        state = (await client.get("/admin/profile")).json()
        return bool(state["active"] == name and state["pending"] is None)

    async with asyncio.timeout(60):
        while True:
            if await active():
                return
            await asyncio.sleep(0.1)


async def test_live_switch_adds_and_removes_a_model_without_touching_the_other() -> None:
    async with running_app("gw-models-one", autoscale=False) as (app, client):
        manager = app.state.gateway.manager
        expected = {}
        for prompt in (SHORT, LONG):
            answer = await client.post("/v1/completions", json=_body("tiny", prompt, 40))
            expected[prompt] = answer.json()["choices"][0]["text"]
        before = {pool: _members(app, pool) for pool in ("prefill", "decode")}
        missing = await client.post("/v1/completions", json=_body("tiny-b", SHORT))
        assert missing.status_code == 404
        stop, seen = asyncio.Event(), Counter[str]()
        load = [asyncio.create_task(_load(client, stop, seen, expected)) for _ in range(8)]
        await asyncio.sleep(0.5)
        await _switch(client, "gw-models-two")  # adds tiny-b and its two pools
        added = await client.post("/v1/completions", json=_body("tiny-b", LONG))
        assert added.status_code == 200, added.text
        assert added.json()["model"] == "tiny-b"
        assert [c["id"] for c in (await client.get("/v1/models")).json()["data"]] == [
            "tiny",
            "tiny-b",
        ]
        await asyncio.sleep(1)  # tiny's load runs under the two-model profile too
        await _switch(client, "gw-models-one")  # removes it again
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 60)
        assert seen["gw-models-one"] and seen["gw-models-two"], seen
        # tiny's replicas are the same workers, ids and processes, all along
        assert {pool: _members(app, pool) for pool in ("prefill", "decode")} == before
        await until(lambda: "decode-b" not in manager.pools, 30)
        gone = await client.post("/v1/completions", json=_body("tiny-b", SHORT))
        assert gone.status_code == 404
