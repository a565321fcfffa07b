"""The hold queue through HTTP: a pool with no ready replica holds requests (demand is
signalled), sheds the lowest priority first with 429, and times out with 503; both carry
Retry-After and OpenAI's error shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pdserve.gateway.app import create_app
from tests.support.gateway import gateway_profile, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BODY = {"model": "tiny", "prompt": "hi", "max_tokens": 2}


async def test_held_requests_shed_by_priority_then_time_out() -> None:
    app = create_app(gateway_profile("gw-cold"), env={}, autoscale=False)
    async with app.router.lifespan_context(app):
        manager = app.state.gateway.manager
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as c:
            assert (await c.get("/ready")).status_code == 503

            def send(priority: int) -> asyncio.Task[httpx.Response]:
                headers = {"x-pdserve-priority": str(priority)}
                return asyncio.create_task(c.post("/v1/completions", json=BODY, headers=headers))

            low, middle = send(0), send(5)
            await until(lambda: manager.snapshot("decode", 0).queued_requests == 2, 5)
            assert manager.demand.is_set()
            refused = await send(1)  # queue full of priorities 0 and 5: 1 sheds 0
            assert refused.status_code != 429
            shed = await low
            assert shed.status_code == 429
            assert int(shed.headers["Retry-After"]) >= 1
            assert shed.json()["error"]["type"] == "rate_limit_error"
            timed_out = await middle
            assert timed_out.status_code == 503
            assert int(timed_out.headers["Retry-After"]) >= 1
            assert timed_out.json()["error"]["code"] == "no_replica"
            assert refused.status_code == 503  # it was held, then timed out too
            metrics = (await c.get("/metrics")).text
            assert 'pdserve_requests_total{model="tiny",route="local",status="429"} 1.0' in metrics
