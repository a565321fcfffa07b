"""The gateway's added latency and its throughput, next to direct calls to the same worker.

Starts `pdserve up` with one simulated worker whose model time is ~0 (bench/profiles/
gateway-overhead.yaml), then in the same run:
0. idle: the gateway's CPU time per second with no traffic (its health and metrics probes);
1. latency: sequential requests, alternating direct and through the gateway; p50/p99 of each and
   the difference (target: <= 1 ms added at p50);
2. streaming: the same for a streamed 16-token request, time to the first event (TTFT) and to
   the end of the stream;
3. throughput: `--concurrency` closed-loop clients for `--duration` seconds, direct, then through
   the gateway (target: >= 50% of direct requests/s), and the gateway's CPU time per request.

One httpx client with keep-alive connections serves both sides of each comparison, warmed first.

    python -m bench.gateway_overhead --requests 500 --concurrency 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from pdserve.stack import stack

PROFILE = Path(__file__).parent / "profiles" / "gateway-overhead.yaml"
BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 1, "temperature": 0}
STREAM_BODY = {**BODY, "max_tokens": 16, "stream": True}
WARM_UP = 20


async def worker_url(gateway: str) -> str:
    """The decode pool's one worker, for the direct side of each comparison."""
    async with httpx.AsyncClient(timeout=5) as client:
        pools = (await client.get(f"{gateway}/admin/pools")).json()
    return str(pools["decode"]["endpoints"][0]["url"])


async def one(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=BODY)
    response.raise_for_status()
    return time.perf_counter() - started


async def one_stream(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(seconds to the first event, seconds to the end of the stream)."""
    started = time.perf_counter()
    first = None
    async with client.stream("POST", f"{url}/v1/completions", json=STREAM_BODY) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: "):
                first = time.perf_counter() - started
    assert first is not None, "the stream had no event"
    return first, time.perf_counter() - started


def compare(direct: list[float], gateway: list[float], prefix: str = "") -> dict[str, float]:
    """p50 and p99 of each side in ms, and gateway minus direct at each."""
    out = {}
    for q in (50, 99):
        sides = {"direct": direct, "gateway": gateway}
        for side, values in sides.items():
            out[f"{prefix}{side}_p{q}_ms"] = float(np.percentile(values, q) * 1000)
        added = out[f"{prefix}gateway_p{q}_ms"] - out[f"{prefix}direct_p{q}_ms"]
        out[f"{prefix}added_p{q}_ms"] = added
    return out


async def latency(client: httpx.AsyncClient, direct: str, gateway: str, n: int) -> dict[str, float]:
    for url in (direct, gateway):  # warm connections and code paths
        for _ in range(WARM_UP):
            await one(client, url)
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(n):
        samples["direct"].append(await one(client, direct))
        samples["gateway"].append(await one(client, gateway))
    return compare(samples["direct"], samples["gateway"])


async def stream_latency(
    client: httpx.AsyncClient, direct: str, gateway: str, n: int
) -> dict[str, float]:
    for url in (direct, gateway):
        for _ in range(WARM_UP):
            await one_stream(client, url)
    ttft: dict[str, list[float]] = {"direct": [], "gateway": []}
    total: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(n):
        for side, url in (("direct", direct), ("gateway", gateway)):
            first, whole = await one_stream(client, url)
            ttft[side].append(first)
            total[side].append(whole)
    result = compare(ttft["direct"], ttft["gateway"], "stream_ttft_")
    return result | compare(total["direct"], total["gateway"], "stream_total_")


async def throughput(url: str, concurrency: int, duration_s: float) -> tuple[float, int]:
    """Requests/s of the timed run, and every request sent (the connection warm-up too)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(one(client, url) for _ in range(concurrency)))  # open connections
        deadline = time.perf_counter() + duration_s
        done = 0

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one(client, url)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done / (time.perf_counter() - started), done + concurrency


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (the gateway, without its workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args: argparse.Namespace, gateway: str, pid: int) -> dict[str, float]:
    direct = await worker_url(gateway)
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(args.idle)  # no traffic: what the health and metrics probes cost
    idle_cpu_s = cpu_seconds(pid) - cpu_before
    result = {"gateway_idle_cpu_ms_per_s": idle_cpu_s * 1000 / (time.monotonic() - started)}
    async with httpx.AsyncClient(timeout=30) as client:
        result |= await latency(client, direct, gateway, args.requests)
        result |= await stream_latency(client, direct, gateway, args.stream_requests)
    result["direct_rps"], _ = await throughput(direct, args.concurrency, args.duration)
    cpu_before = cpu_seconds(pid)
    result["gateway_rps"], served = await throughput(gateway, args.concurrency, args.duration)
    result["gateway_cpu_ms_per_request"] = (cpu_seconds(pid) - cpu_before) / served * 1000
    result["throughput_ratio"] = result["gateway_rps"] / result["direct_rps"]
    result["load_average_1m"] = os.getloadavg()[0]
    result["cpus"] = float(os.cpu_count() or 0)
    return result


def report(result: dict[str, float]) -> str:
    p50_ok = "ok" if result["added_p50_ms"] <= 1.0 else "MISSED"
    rps_ok = "ok" if result["throughput_ratio"] >= 0.5 else "MISSED"
    return "\n".join(
        [
            "| | direct | gateway | added / ratio | target |",
            "|---|---|---|---|---|",
            f"| p50 latency (ms) | {result['direct_p50_ms']:.3f} | {result['gateway_p50_ms']:.3f}"
            f" | {result['added_p50_ms']:+.3f} | <= 1 ms: {p50_ok} |",
            f"| p99 latency (ms) | {result['direct_p99_ms']:.3f} | {result['gateway_p99_ms']:.3f}"
            f" | {result['added_p99_ms']:+.3f} | |",
            _row(result, "stream TTFT p50 (ms)", "stream_ttft_{}_p50_ms"),
            _row(result, "stream TTFT p99 (ms)", "stream_ttft_{}_p99_ms"),
            _row(result, "stream of 16 tokens p50 (ms)", "stream_total_{}_p50_ms"),
            f"| max requests/s | {result['direct_rps']:.0f} | {result['gateway_rps']:.0f}"
            f" | {result['throughput_ratio']:.0%} | >= 50%: {rps_ok} |",
            f"| gateway CPU per request (ms) | | {result['gateway_cpu_ms_per_request']:.3f} | | |",
            f"| gateway CPU while idle (ms per s) | | {result['gateway_idle_cpu_ms_per_s']:.1f}"
            " | | |",
            "",
            f"{result['cpus']:.0f} CPUs, 1-minute load average {result['load_average_1m']:.1f} "
            "(client, gateway and worker share them)",
        ]
    )


def _row(result: dict[str, float], label: str, key: str) -> str:
    direct, gateway, added = (result[key.format(side)] for side in ("direct", "gateway", "added"))
    return f"| {label} | {direct:.3f} | {gateway:.3f} | {added:+.3f} | |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="sequential latency samples")
    parser.add_argument(
        "--stream-requests", type=int, default=200, help="sequential streamed samples"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds without traffic, for the probes' CPU"
    )
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    with stack(PROFILE, env={"PDSERVE_API_KEYS": "", "PDSERVE_ADMIN_TOKEN": ""}) as running:
        result = asyncio.run(measure(args, running.base_url, running.process.pid))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
