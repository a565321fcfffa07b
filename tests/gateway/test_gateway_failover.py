"""Failover over real simulated worker processes: a decode worker killed mid-stream, a prefill
worker killed before a long prompt, ejection and the pool's replacement of dead replicas."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.support.gateway import running_app, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LONG = "Pack my box with five dozen liquor jugs. " * 4  # 164 tokens >= threshold 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app("gw-failover") as pair:
        yield pair


def _kill(app: FastAPI, replica_id: str) -> None:
    pid = app.state.gateway.manager.actuator.pid(replica_id)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)


async def _busy_decode_replica(app: FastAPI) -> str:
    pool = app.state.gateway.manager.pools["decode"]
    async with asyncio.timeout(10):
        while True:
            busy = [r.id for r in pool.replicas.values() if r.inflight > 0]
            if busy:
                return busy[0]
            await asyncio.sleep(0.01)


async def test_decode_worker_dying_mid_stream_ends_it_with_an_error_event(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = gateway
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1500, "stream": True}
    stream = asyncio.create_task(client.post("/v1/completions", json=body))
    victim = await _busy_decode_replica(app)
    await asyncio.sleep(0.5)  # tokens are flowing
    _kill(app, victim)
    response = await asyncio.wait_for(stream, 30)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert len(events) > 2  # some tokens came before the failure
    last = json.loads(events[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["code"] == "replica_failed"
    for _ in range(6):
        later = await client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "again", "max_tokens": 4}
        )
        assert later.status_code == 200
    pool = app.state.gateway.manager.pools["decode"]
    assert victim not in [r.id for r in pool.serving()]
    await until(lambda: len(pool.serving()) == 2, 60)  # the dead replica was replaced


async def test_prefill_worker_killed_falls_back_to_local_prefill_with_same_tokens(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = gateway
    body = {"model": "tiny", "prompt": LONG, "max_tokens": 12, "temperature": 0}
    before = await client.post("/v1/completions", json=body)
    assert before.headers["x-pdserve-route"] == "disaggregated"
    prefill = app.state.gateway.manager.pools["prefill"].serving()[0]
    _kill(app, prefill.id)
    after = await client.post("/v1/completions", json=body)
    assert after.status_code == 200
    assert after.headers["x-pdserve-route"] == "local"
    assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
