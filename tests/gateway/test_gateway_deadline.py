"""Refusing early through HTTP: a request that cannot start within its deadline
(`x-pdserve-deadline-s`) gets 429 with Retry-After at once; one that can is held and served;
a malformed deadline is a 400."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pdserve.gateway.app import create_app
from pdserve.profile import Profile
from tests.support.gateway import until

pytestmark = pytest.mark.integration

PROFILE = {
    "name": "deadline",
    "engine": {"kind": "sim", "sim_timing": "vllm-cpu-tiny"},
    "routing": {"mode": "standard"},
    "pools": {
        "decode": {
            "role": "both",
            "replicas": {"min": 1, "max": 1},
            "admission": {"max_inflight_per_replica": 1},  # one request at a time
        }
    },
    "gateway": {"metrics_interval_s": 0.2},
}


def body(tokens: int) -> dict[str, object]:
    return {"model": "tiny", "prompt": "count", "max_tokens": tokens, "ignore_eos": True}


async def test_a_request_that_cannot_start_in_time_is_refused_at_once() -> None:
    app = create_app(Profile.model_validate(PROFILE), env={}, autoscale=False)
    async with app.router.lifespan_context(app):
        manager = app.state.gateway.manager
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as c:
            await until(lambda: manager.ready_count("decode") == 1, 60)
            bad = await c.post(
                "/v1/completions", json=body(1), headers={"x-pdserve-deadline-s": "x"}
            )
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_value"
            loop = asyncio.get_running_loop()
            started = loop.time()
            first = await c.post("/v1/completions", json=body(256))  # measures a slot's time
            slot_s = loop.time() - started
            assert first.status_code == 200
            busy = asyncio.create_task(c.post("/v1/completions", json=body(512)))
            await until(lambda: manager.snapshot("decode", 0).inflight == 1, 5)
            # 0 ahead, 0 free: a slot frees in about slot_s, past a deadline of half that:
            # refused now, not when the deadline runs out
            deadline_s = slot_s / 2
            sent = loop.time()
            refused = await c.post(
                "/v1/completions", json=body(1), headers={"x-pdserve-deadline-s": f"{deadline_s}"}
            )
            assert loop.time() - sent < deadline_s
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "deadline_exceeded"
            assert int(refused.headers["Retry-After"]) >= 1
            # a generous deadline is held and served once the busy request is done
            held = await c.post(
                "/v1/completions", json=body(1), headers={"x-pdserve-deadline-s": "60"}
            )
            assert held.status_code == 200 and (await busy).status_code == 200
