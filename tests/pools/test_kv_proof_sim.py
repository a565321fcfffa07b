"""The proof that KV moved, end to end over simulated workers: disaggregated requests whose
decode worker recomputes instead of pulling take the prefill replica out of service, with the
reason in /admin/pools, a counter on /metrics and a warning in the log; the next long prompt is
prefilled locally. With a working hand-off nothing is flagged."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.support.gateway import running_app, until

pytestmark = pytest.mark.integration

ADMIN = "kv-proof-admin"
ENV = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
LONG = "".join(f"line {i}: pack my box with five dozen liquor jugs.\n" for i in range(9))


async def long_prompt(client: httpx.AsyncClient, salt: int) -> str:
    body = {"model": "tiny", "prompt": f"{salt} {LONG}", "max_tokens": 4, "temperature": 0}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-pdserve-route"]


async def prefill_endpoint(client: httpx.AsyncClient) -> dict:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    pools = (await client.get("/admin/pools", headers=headers)).json()
    return pools["prefill"]["endpoints"][0]


async def test_a_decode_worker_that_never_pulls_takes_the_prefill_replica_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "pdserve.pools.kv_proof")
    async with running_app("gw-kv-not-pulled", ENV) as (app, client):
        proof = app.state.gateway.manager.kv_proof
        for salt in range(3):
            assert await long_prompt(client, salt) == "disaggregated"  # they all answer
        await until(lambda: bool(proof.faults), timeout_s=10)  # two scrapes later
        endpoint = await prefill_endpoint(client)
        assert endpoint["state"] == "failed"
        assert endpoint["kv_fault"].startswith("not_pulled: decode ")
        assert "counted 0 of" in endpoint["kv_fault"]
        metrics = (await client.get("/metrics")).text
        assert 'pdserve_kv_not_moved_total{pool="prefill",reason="not_pulled"} 1.0' in metrics
        assert "KV did not move (not_pulled)" in caplog.text
        assert await long_prompt(client, 99) == "local"  # no prefill replica to send it to


async def test_requests_served_from_pulled_kv_raise_nothing() -> None:
    async with running_app("gw-disaggregated", ENV) as (app, client):
        proof = app.state.gateway.manager.kv_proof
        manager = app.state.gateway.manager
        decode = next(iter(manager.pools["decode"].replicas.values()))
        for salt in range(3):
            assert await long_prompt(client, salt) == "disaggregated"
        scrapes = decode.scrapes
        await until(lambda: decode.scrapes >= scrapes + 3, timeout_s=10)  # judged by now
        assert proof.faults == []
        assert (await prefill_endpoint(client))["kv_fault"] is None
        assert decode.kv_received_tokens is not None and decode.kv_received_tokens > 0
        assert await long_prompt(client, 4) == "disaggregated"
