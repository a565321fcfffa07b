"""CPU per request of the gateway's hop to a worker: pdserve's keep-alive HTTP/1.1 client against
httpx and aiohttp, on the same simulated worker, the same event loop (uvloop, as `pdserve up`
runs) and the same requests.

Starts a simulated worker (model time /1000, as bench/profiles/gateway-overhead.yaml),
then for each client sends `--requests` completions from `--concurrency` loops over kept-alive
connections, a warm-up first, and counts this process's CPU time (user + system) per request:
the client's cost alone, the worker runs in its own process. Streamed requests (16 tokens as
server-sent events, a quarter as many) are a second column.

    python -m bench.worker_hop --requests 3000 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop

from pdserve.gateway.upstream import Upstream, chunks
from pdserve.workers.sim.launch import SimFleet

BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 1, "temperature": 0}
STREAM_BODY = {**BODY, "max_tokens": 16, "stream": True}
Send = Callable[[dict[str, object]], Awaitable[int]]


async def cpu_per_request(send: Send, body: dict[str, object], n: int, concurrency: int) -> float:
    """Milliseconds of this process's CPU per request over `n` requests."""

    async def loop(count: int) -> None:
        for _ in range(count):
            assert await send(body) == 200

    await asyncio.gather(*(loop(20) for _ in range(concurrency)))  # open connections, warm up
    before = time.process_time()
    await asyncio.gather(*(loop(n // concurrency) for _ in range(concurrency)))
    return (time.process_time() - before) / (n // concurrency * concurrency) * 1000


async def measure(url: str, n: int, concurrency: int) -> dict[str, tuple[float, float]]:
    target = f"{url}/v1/completions"
    results = {}
    async with Upstream() as upstream:

        async def pdserve(body: dict[str, object]) -> int:
            response = await upstream.open(target, body, {}, 30.0)
            try:
                async for _ in chunks(response):
                    pass
                return response.status
            finally:
                response.release()

        results["pdserve http11"] = await both(pdserve, n, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, trust_env=False) as client:

        async def with_httpx(body: dict[str, object]) -> int:
            async with client.stream("POST", target, json=body) as response:
                async for _ in response.aiter_raw():
                    pass
                return response.status_code

        results["httpx"] = await both(with_httpx, n, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def with_aiohttp(body: dict[str, object]) -> int:
            async with session.post(target, json=body) as response:
                async for _ in response.content.iter_any():
                    pass
                return response.status

        results["aiohttp"] = await both(with_aiohttp, n, concurrency)
    return results


async def both(send: Send, n: int, concurrency: int) -> tuple[float, float]:
    whole = await cpu_per_request(send, BODY, n, concurrency)
    return whole, await cpu_per_request(send, STREAM_BODY, n // 4, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per client")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent loops")
    args = parser.parse_args(argv)
    with SimFleet() as fleet:
        url = fleet.start("both", ["--time-scale", "1000"], timeout_s=60)
        results = uvloop.run(measure(url, args.requests, args.concurrency))
    print("| client | CPU ms per request | CPU ms per streamed request (16 tokens) |")
    print("|---|---|---|")
    for name, (whole, streamed) in results.items():
        print(f"| {name} | {whole:.3f} | {streamed:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
