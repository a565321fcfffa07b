"""Issue 13 on real vLLM CPU workers (the session cluster's prefill, decode and both workers,
KV over NIXL, a 6 s block lease): a client that leaves frees the prefill's KV blocks at every
stage well before the lease, without one expiring (left during the prefill hop: released as
soon as the prefill ends, since vLLM cannot stop a step under way); disaggregated requests
are proven served from pulled KV; a decode worker without the KV connector is caught; a
prefill worker restarted on the same ports (a new engine id) is handshaken again and serves
the right greedy tokens.

The gateway runs in this test's event loop (uvicorn on a socket), in front of the cluster's
workers through the static actuator. Run this tier under `flock /tmp/pdserve-vllm.lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pdserve.profile import Profile
from tests.gateway.test_gateway_abort import RawClient
from tests.support.vllm_cluster import prompt_text

pytestmark = pytest.mark.vllm

ADMIN = "abort-vllm-admin"
ENV = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
USAGE = "vllm:kv_cache_usage_perc"
EXPIRED = "vllm:nixl_num_kv_expired_reqs_total"
BY_SOURCE = "vllm:prompt_tokens_by_source_total"


def profile(prefill_url: str, decode_url: str) -> Profile:
    return Profile.model_validate(
        {
            "name": "abort-vllm",
            "model": {"name": "tiny", "source": "tiny", "dtype": "float32"},
            "engine": {"kind": "vllm", "device": "cpu"},
            "routing": {"mode": "disaggregated", "prefill_threshold": 64},
            "pools": {
                "prefill": {"role": "prefill", "replicas": {"min": 1, "max": 1}},
                "decode": {
                    "role": "decode",
                    "replicas": {"min": 1, "max": 1},
                    "admission": {"max_inflight_per_replica": 1},
                },
            },
            "actuator": {
                "kind": "static",
                "static": {"endpoints": {"prefill": [prefill_url], "decode": [decode_url]}},
            },
            "gateway": {"metrics_interval_s": 0.2, "queue_timeout_s": 120},
        }
    )


async def metric(url: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def pools(base_url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        view: dict[str, Any] = (await client.get(f"{base_url}/admin/pools", headers=headers)).json()
    return view


async def eventually(check: Any, within_s: float, what: str, poll_s: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(poll_s)
    raise AssertionError(f"{what}: not within {within_s} s")


@contextlib.asynccontextmanager
async def gateway(gateway_server: Any, prefill: str, decode: str) -> AsyncIterator[str]:
    async with gateway_server(profile(prefill, decode), ENV) as base_url:

        async def ready() -> bool:
            view = await pools(base_url)
            return all(view[p]["replicas"]["ready"] == 1 for p in ("prefill", "decode"))

        await eventually(ready, 60, "both pools ready")
        yield base_url


def body(salt: str, length: int = 900, max_tokens: int = 16, stream: bool = False) -> dict:
    payload: dict[str, Any] = {"model": "tiny", "prompt": prompt_text(length, salt)}
    payload |= {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if stream:
        payload["stream"] = True
    return payload


def reference(pd: Any, url: str, payload: dict) -> str:
    """The `both` worker's greedy text for `payload` (pd.call sets ignore_eos itself)."""
    return str(pd.call(url, {k: v for k, v in payload.items() if k != "ignore_eos"}).text)


async def complete(base_url: str, payload: dict) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        response = await client.post("/v1/completions", json=payload)
    assert response.status_code == 200, response.text
    return response.headers["x-pdserve-route"], response.json()["choices"][0]["text"]


async def idle_within(url: str, seconds: float) -> float:
    return await eventually(lambda: _le(metric(url, USAGE), 0.0), seconds, "prefill KV idle")


async def _hop_on(base_url: str) -> bool:
    return bool((await pools(base_url))["prefill"]["endpoints"][0]["inflight"] > 0)


async def _le(value: Any, ceiling: float) -> bool:
    return bool(await value <= ceiling)


async def _gt(value: Any, floor: float) -> bool:
    return bool(await value > floor)


async def test_a_client_leaving_frees_the_prefill_blocks_at_every_stage(
    cluster: Any, gateway_server: Any
) -> None:
    workers = await asyncio.to_thread(cluster.require, "prefill", "decode")
    prefill, decode = workers["prefill"].url, workers["decode"].url
    lease_s = cluster.lease_s
    async with gateway(gateway_server, prefill, decode) as base_url:
        expired = await metric(prefill, EXPIRED)
        # (a) during the prefill hop: it finishes detached, its blocks are released at once
        finished = await metric(prefill, "vllm:request_success_total")
        generated = await metric(decode, "vllm:generation_tokens_total")
        client = RawClient(base_url, body("stage-a", 2000))
        await client.send()
        await eventually(lambda: _hop_on(base_url), 10, "the prefill hop under way", poll_s=0.005)
        await client.leave()
        answered = lambda: _gt(metric(prefill, "vllm:request_success_total"), finished)  # noqa: E731
        await eventually(answered, 30, "the prefill answered")
        freed_a = await idle_within(prefill, lease_s / 2)
        await asyncio.sleep(0.5)
        # the decode worker computed the release's one token, not the client's 16
        assert await metric(decode, "vllm:generation_tokens_total") <= generated + 1

        # (b) prefilled, waiting for the decode replica's one slot (a long local stream)
        occupier = asyncio.create_task(complete(base_url, body("occupy", 8, 1500)))
        await asyncio.sleep(1.0)
        finished = await metric(prefill, "vllm:request_success_total")
        client = RawClient(base_url, body("stage-b"))
        await client.send()
        answered = lambda: _gt(metric(prefill, "vllm:request_success_total"), finished)  # noqa: E731
        await eventually(answered, 30, "the prefill answered")
        assert await metric(prefill, USAGE) > 0  # its blocks are pinned for the pull
        await client.leave()
        freed_b = await idle_within(prefill, lease_s / 2)
        assert not occupier.done()  # freed by the release, not by the request's own decode
        occupier.cancel()

        # (c) mid-stream: the decode stops
        client = RawClient(base_url, body("stage-c", max_tokens=1000, stream=True))
        await client.send()
        await client.read_some(at_least=3000)
        await client.leave()
        running = lambda: _le(metric(decode, "vllm:num_requests_running"), 0)  # noqa: E731
        await eventually(running, 5, "the decode stopped")
        freed_c = await idle_within(prefill, lease_s / 2)
        assert await metric(prefill, EXPIRED) == expired  # nothing waited out its lease
    print(f"\n[abort] freed after leaving: a {freed_a:.2f} s, b {freed_b:.2f} s, c {freed_c:.2f} s")


async def test_disaggregated_requests_are_proven_served_from_pulled_kv(
    cluster: Any, gateway_server: Any
) -> None:
    workers = await asyncio.to_thread(cluster.require, "prefill", "decode")
    prefill, decode = workers["prefill"].url, workers["decode"].url
    async with gateway(gateway_server, prefill, decode) as base_url:
        pulled = await metric(decode, BY_SOURCE, source="external_kv_transfer")
        for i in range(3):
            assert (await complete(base_url, body(f"proof-{i}")))[0] == "disaggregated"
        assert await metric(decode, BY_SOURCE, source="external_kv_transfer") >= pulled + 3 * 899
        await asyncio.sleep(1.5)  # several scrapes: the requests are judged
        view = await pools(base_url)
        assert view["prefill"]["endpoints"][0]["kv_fault"] is None
        assert view["prefill"]["replicas"]["ready"] == 1


async def test_a_decode_worker_without_the_kv_connector_is_caught(
    cluster: Any, gateway_server: Any
) -> None:
    workers = await asyncio.to_thread(cluster.require, "prefill", "both")
    async with gateway(gateway_server, workers["prefill"].url, workers["both"].url) as base_url:
        for i in range(2):  # they answer: the `both` worker recomputes the prompt
            assert (await complete(base_url, body(f"noconn-{i}")))[0] == "disaggregated"

        async def faulted() -> bool:
            return (await pools(base_url))["prefill"]["endpoints"][0]["kv_fault"] is not None

        await eventually(faulted, 10, "the prefill replica flagged")
        fault = (await pools(base_url))["prefill"]["endpoints"][0]["kv_fault"]
        assert fault.startswith("not_pulled: ")
        async with httpx.AsyncClient(base_url=base_url) as client:
            text = (await client.get("/metrics")).text
        assert 'pdserve_kv_not_moved_total{pool="prefill",reason="not_pulled"} 1.0' in text
        assert (await complete(base_url, body("noconn-next")))[0] == "local"


async def test_a_prefill_worker_restarted_on_the_same_ports_is_handshaken_again(
    cluster: Any, gateway_server: Any, pd: Any
) -> None:
    workers = await asyncio.to_thread(cluster.require, "prefill", "decode", "both")
    prefill, decode = workers["prefill"].url, workers["decode"].url
    async with gateway(gateway_server, prefill, decode) as base_url:
        first = body("rehandshake-1", max_tokens=24)
        route, text = await complete(base_url, first)
        assert route == "disaggregated"
        assert text == await asyncio.to_thread(reference, pd, workers["both"].url, first)
        old = await asyncio.to_thread(pd.prefill, prefill, first)

        restarted = await asyncio.to_thread(cluster.restart, "prefill")  # new engine id
        assert restarted.url == prefill
        new = await asyncio.to_thread(pd.prefill, prefill, first)
        assert (
            new["kv_transfer_params"]["remote_engine_id"]
            != (old["kv_transfer_params"]["remote_engine_id"])
        )

        async def prefill_ready() -> bool:
            return (await pools(base_url))["prefill"]["replicas"]["ready"] == 1

        await eventually(prefill_ready, 30, "the restarted prefill replica ready")
        second = body("rehandshake-2", max_tokens=24)
        pulled = await metric(decode, BY_SOURCE, source="external_kv_transfer")
        route, text = await complete(base_url, second)
        assert route == "disaggregated"
        assert text == await asyncio.to_thread(reference, pd, workers["both"].url, second)
        # served from the new engine's blocks, not recomputed after a failed pull
        assert await metric(decode, BY_SOURCE, source="external_kv_transfer") >= pulled + 899
