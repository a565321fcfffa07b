"""The simulated worker's LoRA API answers as vLLM 0.32's does: a load of one held already is
400, an unload of one not held is 404, both names needed; off without --enable-lora."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from pdserve.workers.sim.lora import LoraRegistry, adapter_salt, add_routes, parse_modules

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]


def client_for(registry: LoraRegistry) -> httpx.AsyncClient:
    app = FastAPI()
    add_routes(app, registry)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")


async def test_load_and_unload_answer_as_vllm() -> None:
    registry = LoraRegistry(max_loras=2, loaded={"pirate": "/a/pirate"})
    async with client_for(registry) as worker:
        load = await worker.post(
            "/v1/load_lora_adapter", json={"lora_name": "poet", "lora_path": "/a/poet"}
        )
        assert load.status_code == 200 and "added successfully" in load.text
        again = await worker.post(
            "/v1/load_lora_adapter", json={"lora_name": "poet", "lora_path": "/a/poet"}
        )
        assert (
            again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        )
        nameless = await worker.post("/v1/load_lora_adapter", json={"lora_name": "x"})
        assert nameless.status_code == 400
        gone = await worker.post("/v1/unload_lora_adapter", json={"lora_name": "chef"})
        assert gone.status_code == 404 and "cannot be found" in gone.json()["error"]["message"]
        unload = await worker.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"})
        assert unload.status_code == 200
    assert registry.loaded == {"poet": "/a/poet"}
    assert (registry.loads, registry.unloads) == (1, 1)
    assert [c["parent"] for c in registry.cards("tiny", 0)] == ["tiny"]


async def test_no_lora_no_routes_and_flag_parsing() -> None:
    async with client_for(LoraRegistry()) as worker:
        answer = await worker.post(
            "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/a"}
        )
        assert answer.status_code == 404  # vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING: no route
    assert parse_modules(["a=/x/a", "b=seeded:tiny/b"]) == {"a": "/x/a", "b": "seeded:tiny/b"}
    with pytest.raises(ValueError, match="name=path"):
        parse_modules(["nopath"])
    assert adapter_salt("a") != adapter_salt("b")
