"""LoRA adapters behind the gateway, with simulated workers as real local processes (they follow
vLLM's LoRA flags and runtime load/unload API): a request naming an adapter goes to its base
model's pools with the adapter's name sent to the prefill and the decode worker, adapters are
listed with their parent, one loaded on demand is loaded on both replicas of the hop first, a
third adapter over max_loras evicts the least recently used, an unknown one gets OpenAI's 404."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.support.gateway import running_app, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LONG = "Sphinx of black quartz, judge my vow. " * 5  # 185 tokens: over the threshold (64)


def _body(model: str, prompt: str = LONG) -> dict[str, object]:
    return {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}


def _url(app: FastAPI, pool: str) -> str:
    (replica,) = app.state.gateway.manager.pools[pool].replicas.values()
    return str(replica.url)


async def _held(app: FastAPI, pool: str) -> list[str]:
    """The adapters the pool's worker itself lists (its /v1/models, parent = the base model)."""
    async with httpx.AsyncClient(timeout=10) as worker:
        cards = (await worker.get(f"{_url(app, pool)}/v1/models")).json()["data"]
    assert all(c["parent"] == "tiny" for c in cards if c["id"] != "tiny")
    return sorted(c["id"] for c in cards if c["id"] != "tiny")


async def _models_received(app: FastAPI, pool: str) -> list[str]:
    async with httpx.AsyncClient(timeout=10) as worker:
        received = (await worker.get(f"{_url(app, pool)}/sim/received")).json()
    return [r["model"] for r in received]


async def _complete(client: httpx.AsyncClient, model: str) -> httpx.Response:
    answer = await client.post("/v1/completions", json=_body(model))
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == model
    assert answer.headers["x-pdserve-route"] == "disaggregated"
    return answer


async def test_adapters_routed_loaded_on_demand_and_evicted() -> None:
    async with running_app("gw-adapters") as (app, client):
        listed = (await client.get("/v1/models")).json()["data"]
        assert [(c["id"], c.get("parent")) for c in listed] == [
            ("tiny", None), ("pirate", "tiny"), ("poet", "tiny"), ("chef", "tiny"),
            ("broken", "tiny"),
        ]  # fmt: skip
        assert await _held(app, "prefill") == await _held(app, "decode") == ["pirate"]

        texts = {
            m: (await _complete(client, m)).json()["choices"][0]["text"] for m in ("tiny", "pirate")
        }
        assert texts["tiny"] != texts["pirate"]  # the adapter's tokens, not the base model's
        for pool in ("prefill", "decode"):  # both hops of the P/D request carried the adapter
            assert (await _models_received(app, pool))[-1] == "pirate"

        await _complete(client, "poet")  # on demand: loaded on both replicas before the hop
        assert await _held(app, "prefill") == await _held(app, "decode") == ["pirate", "poet"]

        await _complete(client, "chef")  # max_loras 2: pirate, used longest ago, makes room
        assert await _held(app, "prefill") == await _held(app, "decode") == ["chef", "poet"]
        await _complete(client, "pirate")  # and comes back in place of poet
        assert await _held(app, "decode") == ["chef", "pirate"]


async def test_an_unknown_adapter_gets_openais_404() -> None:
    async with running_app("gw-adapters") as (_app, client):
        answer = await client.post("/v1/completions", json=_body("pirate-v2"))
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
        assert answer.json()["error"]["param"] == "model"


async def test_an_adapter_that_cannot_be_found_is_a_clear_503_and_the_replicas_stay() -> None:
    async with running_app("gw-adapters") as (app, client):
        answer = await client.post("/v1/completions", json=_body("broken"))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "adapter_unavailable"
        assert "/nonexistent/adapter" in answer.json()["error"]["message"]
        await _complete(client, "pirate")  # the same prefill and decode replicas serve on


async def test_requests_for_an_adapter_keep_to_the_replica_holding_it() -> None:
    async with running_app("gw-adapters-rr") as (app, client):
        manager = app.state.gateway.manager
        await until(lambda: manager.ready_count("decode") == 2, 60)
        replicas = manager.pools["decode"].replicas.values()
        for _ in range(4):  # round-robin alone would alternate (and load it on both)
            answer = await client.post("/v1/completions", json=_body("poet", "short"))
            assert answer.status_code == 200, answer.text
        async with httpx.AsyncClient(timeout=10) as worker:
            served = [len((await worker.get(f"{r.url}/sim/received")).json()) for r in replicas]
        assert sorted(served) == [0, 4]
        base = [await client.post("/v1/completions", json=_body("tiny", "short")) for _ in range(2)]
        assert [b.status_code for b in base] == [200, 200]  # the base model: round-robin as ever


async def _worker_post(app: FastAPI, pool: str, path: str, body: dict[str, str]) -> None:
    """A load or unload straight on the pool's worker, the gateway not told."""
    async with httpx.AsyncClient(timeout=10) as worker:
        answer = await worker.post(f"{_url(app, pool)}{path}", json=body)
    assert answer.status_code == 200, answer.text


async def test_residency_is_relearned_from_what_the_workers_list() -> None:
    """A worker restarted under the same id (a pod's container restart) holds only its start
    adapters again, and one may hold an adapter the gateway never loaded: the gateway takes
    what each replica holds from its /v1/models on every scrape, not from its own loads."""
    async with running_app("gw-adapters") as (app, client):
        manager = app.state.gateway.manager
        residency = manager.adapter_residency
        (decode,) = manager.pools["decode"].replicas
        await _complete(client, "poet")  # loaded on demand: the gateway's own record
        assert residency.resident_on(decode) == ["pirate", "poet"]
        # the decode worker loses poet as a restart would, and holds chef loaded outside
        await _worker_post(app, "decode", "/v1/unload_lora_adapter", {"lora_name": "poet"})
        chef = {"lora_name": "chef", "lora_path": "/preloaded/chef"}
        await _worker_post(app, "decode", "/v1/load_lora_adapter", chef)
        await until(lambda: residency.resident_on(decode) == ["chef", "pirate"], 10)
        assert residency.holding("chef") == {decode}
        await _complete(client, "poet")  # loaded again where it was lost, not sent unloaded
        held = await _held(app, "decode")
        assert "poet" in held and len(held) == 2  # max_loras 2: one of the others made room
        assert (await _models_received(app, "decode"))[-1] == "poet"
