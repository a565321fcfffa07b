"""Many concurrent idle-ish streams through one gateway, and the gateway's memory as they open.

    python -m bench.soak_streams --waves 1000,2000 --out bench/results/soak_streams.json

`pdserve up` with one unified pool of one simulated worker that takes every stream at once
(`max_num_seqs` and the admission cap above the count) and runs slowly (`--time-scale`), so each
stream sends a token every few seconds: the gateway holds connections, not tokens. Its timing is
the tiny CPU preset with compute made free (`STREAMS_TIMING`): a stream's first event comes with
its first token (as vLLM's role event does), so prefill at the preset's cost, slowed as much as
the trickle, would make opening 2,000 streams take over ten minutes (each batch of 250 short
prompts is about 70 s of scaled prefill) while decode, memory-bound, keeps the trickle; and a
step's token budget is above the streams, so a batch's prompts fit beside every running
stream's decode token (with the preset's 2,048, 1,750 streams leave 300 tokens of prefill a
step and the last batches take dozens of steps). Each wave
opens its count of chat streams in batches (a stream is held once its first event, the
assistant role, has come through the gateway), reads the gateway's RSS (psutil) and /health
while all are held, then closes them all.

What the numbers mean: the first wave gives the cost per stream (its growth over the baseline
before any stream, one-time costs included). A gateway whose memory is bounded by what it holds
grows linearly in the streams and reuses between waves what the last one freed, so a later
wave of N streams grows about N times that cost (`excess_over_first_wave_cost_bytes` near 0).
A leak of L bytes a stream adds L for each stream of the first wave and of this one (the first
wave's leaked memory is not reused); a cost superlinear in the count shows as well. The test
(tests/bench/test_soak_streams.py) bounds the excess by the run's own measured cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.soak_checks import rss_bytes
from pdserve.stack import Stack, stack

OPEN_BATCH = 250
SETTLE_S = 1.0
STREAMS_TIMING = {
    "base": "vllm-cpu-tiny",
    "name": "soak-streams",
    "accelerator": {"base": "cpu", "flops": 9.0e13},  # 1,000x the preset's: prefill ~free
}


def streams_profile(streams: int, time_scale: float, timing: Path) -> dict[str, Any]:
    """One simulated `both` worker that admits `streams` at once, timed by the file `timing`
    (STREAMS_TIMING) and slowed by `time_scale`."""
    room = streams + 256
    return {
        "name": "soak-streams",
        "description": "bench.soak_streams: one slow simulated worker holding every stream",
        "model": {"name": "tiny", "source": "tiny", "dtype": "float32", "max_model_len": 2048},
        "engine": {"kind": "sim", "device": "cpu", "max_num_seqs": room, "kv_cache_gib": 64,
                   "max_num_batched_tokens": room + 4096,
                   "sim_timing": str(timing), "sim_time_scale": time_scale},
        "routing": {"mode": "standard", "picker": "least-load"},
        "pools": {"decode": {"role": "both", "replicas": {"min": 1, "max": 1},
                             "admission": {"max_inflight_per_replica": room}}},
        "actuator": {"kind": "local"},
        "gateway": {"max_queued_per_pool": room, "queue_timeout_s": 300},
    }  # fmt: skip


@dataclass
class Wave:
    """The streams of one wave: tasks reading them, how many are held, the tokens after."""

    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    first_tokens: int = 0
    tokens: int = 0
    failures: list[str] = field(default_factory=list)


async def _hold(client: httpx.AsyncClient, wave: Wave, first: asyncio.Event, n: int) -> None:
    """One chat stream, held once its first event (the assistant role) has come through the
    gateway; its tokens then trickle until it is cancelled."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"stream {n}"}],
            "max_tokens": 1500, "stream": True, "temperature": 0, "ignore_eos": True}  # fmt: skip
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                wave.failures.append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                if '"error"' in line:
                    wave.failures.append(line[:200])
                elif not first.is_set():
                    wave.first_tokens += 1
                    first.set()
                else:
                    wave.tokens += 1
    except httpx.HTTPError as exc:
        wave.failures.append(repr(exc)[:200])
    finally:
        first.set()


async def open_streams(client: httpx.AsyncClient, wave: Wave, count: int, timeout_s: float) -> None:
    """Open streams until `count` are held (in batches; each waits for its first token)."""
    async with asyncio.timeout(timeout_s):
        while len(wave.tasks) < count:
            batch = []
            for _ in range(min(OPEN_BATCH, count - len(wave.tasks))):
                first = asyncio.Event()
                wave.tasks.append(asyncio.create_task(_hold(client, wave, first, len(wave.tasks))))
                batch.append(first.wait())
            await asyncio.gather(*batch)
            print(f"  {len(wave.tasks)} streams held, {wave.tokens} tokens", file=sys.stderr)


async def close_streams(wave: Wave) -> None:
    for task in wave.tasks:
        task.cancel()
    await asyncio.gather(*wave.tasks, return_exceptions=True)


async def _rss(pid: int) -> int:
    """The gateway's RSS once it has settled (the median of three readings)."""
    await asyncio.sleep(SETTLE_S)
    readings = []
    for _ in range(3):
        readings.append(rss_bytes(pid))
        await asyncio.sleep(0.2)
    return sorted(readings)[1]


async def _health_s(client: httpx.AsyncClient) -> float:
    start = time.monotonic()
    response = await client.get("/health", timeout=30)
    response.raise_for_status()
    return round(time.monotonic() - start, 3)


async def _wave(client: httpx.AsyncClient, pid: int, count: int, timeout_s: float) -> dict:
    """Open `count` streams, read the gateway's RSS and health while they are held, close them."""
    wave, start = Wave(), time.monotonic()
    try:
        await open_streams(client, wave, count, timeout_s)
        open_s = round(time.monotonic() - start, 1)
        rss, health_s = await _rss(pid), await _health_s(client)
    finally:
        await close_streams(wave)
    return {"streams": count, "held": wave.first_tokens, "rss_bytes": rss, "health_s": health_s,
            "open_s": open_s, "tokens": wave.tokens, "failures": wave.failures[:20],
            "after_close_rss_bytes": await _rss(pid)}  # fmt: skip


async def measure(running: Stack, waves: list[int], timeout_s: float) -> dict[str, Any]:
    pid = running.process.pid
    limits = httpx.Limits(max_connections=max(waves) + 64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=running.base_url, limits=limits, timeout=None) as client:
        warm = await client.post("/v1/completions", json={"model": "tiny", "prompt": "warm",
                                                           "max_tokens": 2})  # fmt: skip
        warm.raise_for_status()
        baseline = await _rss(pid)
        done = [await _wave(client, pid, count, timeout_s) for count in waves]
    return summarize(baseline, done)


def summarize(baseline: int, waves: list[dict[str, Any]]) -> dict[str, Any]:
    """The first wave's cost per stream, and each later wave's growth over what that cost
    predicts for its count (0 for memory linear in the streams and reused between waves)."""
    first = waves[0]
    per_stream = (first["rss_bytes"] - baseline) / first["streams"]
    excess = [w["rss_bytes"] - baseline - per_stream * w["streams"] for w in waves[1:]]
    return {
        "baseline_rss_bytes": baseline,
        "waves": waves,
        "per_stream_bytes": round(per_stream),
        "growth_bytes": [w["rss_bytes"] - baseline for w in waves],
        "excess_over_first_wave_cost_bytes": [round(e) for e in excess],
    }


def run(waves: Sequence[int], time_scale: float, timeout_s: float,
        log_dir: Path) -> dict[str, Any]:  # fmt: skip
    timing = log_dir / "soak-streams-timing.yaml"
    timing.write_text(yaml.safe_dump(STREAMS_TIMING, sort_keys=False))
    path = log_dir / "soak-streams.yaml"
    profile = streams_profile(max(waves), time_scale, timing)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    with stack(path, log_dir=log_dir, ready_timeout_s=120) as running:
        result = asyncio.run(measure(running, list(waves), timeout_s))
    return {"tool": "bench.soak_streams", "time_scale": time_scale, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_streams")
    parser.add_argument("--waves", default="1000,2000", help="streams held at once, per wave")
    parser.add_argument("--time-scale", type=float, default=0.005, help="the worker's slowness")
    parser.add_argument("--open-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    waves = [int(n) for n in args.waves.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(waves, args.time_scale, args.open_timeout_s, Path(tmp))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # teardown runs on SIGTERM too
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
