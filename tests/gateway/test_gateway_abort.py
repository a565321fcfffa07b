"""A client that disconnects frees what its request holds, at every stage: held in the gateway's
queue, on the prefill worker, between the prefill answer and the decode pull, and mid-stream.

The gateway runs on a real socket (uvicorn) over simulated workers (tests/support/profiles/
gw-abort.yaml: prefills take ~1.5 s, the decode replica takes one request at a time). The client
is a raw socket that closes mid-request, as a browser tab or a timed-out SDK does. The workers'
own metrics say what happened: the prefill's KV usage, NIXL's lease-expiry counter, finished
requests and generated tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import gateway_profile

pytestmark = pytest.mark.integration

ADMIN = "abort-admin"
ENV = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
LEASE_S = 30.0  # the profile's block_lease_s: freed "early" means well before this
FREED_WITHIN_S = 3.0
LONG = "".join(f"line {i}: pack my box with five dozen liquor jugs.\n" for i in range(9))


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{url}/metrics")).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


async def worker_urls(base_url: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        pools = (await client.get(f"{base_url}/admin/pools", headers=headers)).json()
    return {name: pool["endpoints"][0]["url"] for name, pool in pools.items()}


async def queue_depth(base_url: str, pool: str) -> int:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        pools = (await client.get(f"{base_url}/admin/pools", headers=headers)).json()
    return int(pools[pool]["queue_depth"])


class RawClient:
    """One request on a raw socket, so the test decides exactly when the client leaves."""

    def __init__(self, base_url: str, body: dict[str, Any]) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.body = json.dumps(body).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + self.body)
        await self.writer.drain()

    async def read_some(self, at_least: int) -> bytes:
        assert self.reader is not None
        data = b""
        while len(data) < at_least:
            piece = await asyncio.wait_for(self.reader.read(4096), 30)
            if not piece:
                raise AssertionError(f"the gateway closed the stream early: {data!r}")
            data += piece
        return data

    async def leave(self) -> None:
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()


def long_body(max_tokens: int = 8, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "prompt": LONG, "max_tokens": max_tokens}
    body["temperature"] = 0
    if stream:
        body["stream"] = True
    return body


async def eventually(check: Any, within_s: float) -> float:
    """Seconds until `await check()` holds (AssertionError after `within_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within_s} s")


async def occupy_decode(base_url: str) -> asyncio.Task[None]:
    """A long local stream that holds the decode replica's one slot for ~9 s."""

    async def stream() -> None:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2000, "stream": True}
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=60) as client,
            client.stream("POST", "/v1/completions", json=body) as response,
        ):
            async for _ in response.aiter_bytes():
                pass

    task = asyncio.create_task(stream())
    await asyncio.sleep(0.5)
    return task


@contextlib.asynccontextmanager
async def abort_stack(gateway_server: Any) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The gateway (in this test's event loop) and its two workers' URLs."""
    async with gateway_server(gateway_profile("gw-abort"), ENV) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            for _ in range(600):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        yield base_url, await worker_urls(base_url)


async def test_a_client_leaving_while_held_leaves_the_queue_at_once(gateway_server: Any) -> None:
    async with abort_stack(gateway_server) as (base_url, _):
        occupier = await occupy_decode(base_url)
        try:
            client = RawClient(base_url, {"model": "tiny", "prompt": "hello", "max_tokens": 4})
            await client.send()
            await eventually(lambda: _is(queue_depth(base_url, "decode"), 1), 5)
            await client.leave()
            # without the watch it stays held until the occupier's ~9 s stream ends
            await eventually(lambda: _is(queue_depth(base_url, "decode"), 0), 2)
        finally:
            occupier.cancel()


async def test_a_client_leaving_during_the_prefill_has_its_blocks_freed_when_it_ends(
    gateway_server: Any,
) -> None:
    """vLLM cannot stop a prefill step under way, and a prefill that ends as its connection
    closes keeps its blocks with nobody to name them: the hop finishes, its blocks go at once,
    and the decode worker computes one token of it (the release), not the client's request."""
    async with abort_stack(gateway_server) as (base_url, urls):
        expired = await metric(urls["prefill"], "vllm:nixl_num_kv_expired_reqs_total")
        finished = await metric(urls["prefill"], "vllm:request_success_total")
        generated = await metric(urls["decode"], "vllm:generation_tokens_total")
        client = RawClient(base_url, long_body(max_tokens=200))
        await client.send()
        running = lambda: _above(metric(urls["prefill"], "vllm:num_requests_running"), 0)  # noqa: E731
        await eventually(running, 5)
        await client.leave()  # ~1.5 s before the prefill ends
        answered = lambda: _above(metric(urls["prefill"], "vllm:request_success_total"), finished)  # noqa: E731
        await eventually(answered, 5)
        idle = lambda: _is(metric(urls["prefill"], "vllm:kv_cache_usage_perc"), 0)  # noqa: E731
        assert await eventually(idle, FREED_WITHIN_S) < LEASE_S / 4
        assert await metric(urls["prefill"], "vllm:nixl_num_kv_expired_reqs_total") == expired
        await asyncio.sleep(0.5)
        assert await metric(urls["decode"], "vllm:generation_tokens_total") <= generated + 1


async def test_a_client_leaving_between_the_prefill_and_the_pull_frees_the_blocks_early(
    gateway_server: Any,
) -> None:
    async with abort_stack(gateway_server) as (base_url, urls):
        expired = await metric(urls["prefill"], "vllm:nixl_num_kv_expired_reqs_total")
        occupier = await occupy_decode(base_url)  # the prefilled request will wait for the slot
        try:
            client = RawClient(base_url, long_body())
            await client.send()
            # prefilled (it answered): its blocks stay pinned there, awaiting a pull
            finished = await metric(urls["prefill"], "vllm:request_success_total")
            await eventually(
                lambda: _above(metric(urls["prefill"], "vllm:request_success_total"), finished),
                10,
            )
            assert await metric(urls["prefill"], "vllm:kv_cache_usage_perc") > 0
            await client.leave()
            seconds = await eventually(
                lambda: _is(metric(urls["prefill"], "vllm:kv_cache_usage_perc"), 0), FREED_WITHIN_S
            )
            assert seconds < LEASE_S / 4 and not occupier.done()  # freed early, not by the pull
            after = await metric(urls["prefill"], "vllm:nixl_num_kv_expired_reqs_total")
            assert after == expired  # released, not expired
        finally:
            occupier.cancel()


async def test_a_client_leaving_mid_stream_stops_the_decode(gateway_server: Any) -> None:
    async with abort_stack(gateway_server) as (base_url, urls):
        generated = await metric(urls["decode"], "vllm:generation_tokens_total")
        client = RawClient(base_url, long_body(max_tokens=1500, stream=True))
        await client.send()
        await client.read_some(at_least=2000)  # headers and a few dozen tokens
        await client.leave()
        await eventually(lambda: _is(metric(urls["decode"], "vllm:num_requests_running"), 0), 2)
        stopped_at = await metric(urls["decode"], "vllm:generation_tokens_total")
        await asyncio.sleep(0.5)
        assert await metric(urls["decode"], "vllm:generation_tokens_total") == stopped_at
        assert stopped_at - generated < 1500  # it stopped, it did not run to max_tokens
        assert await metric(urls["prefill"], "vllm:kv_cache_usage_perc") == 0  # pulled before


async def _is(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def _above(value: Any, floor: float) -> bool:
    return bool(await value > floor)
