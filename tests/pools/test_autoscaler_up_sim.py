"""`pdserve up` with simulated workers (local actuator, 1 s cold start): each pool scales on its
own signal, both return to their minimum when idle (prefill to zero), a request arriving at zero
is held and served, and no request is lost. Driven with the official openai client.

The tests share one `pdserve up` (module scope) and run in file order; each first waits, with a
bound, for the quiet state it starts from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from pdserve.stack import Stack, stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration

PROFILE = PROFILES / "sim-autoscale.yaml"
ADMIN_TOKEN = "autoscale-admin"
START_TIMEOUT_S = 90.0
LONG_PROMPT = "x" * 6000  # the tiny model's byte tokenizer: ~6000 tokens, above the 512 threshold


@dataclass
class Up:
    stack: Stack
    worker_urls: set[str] = field(default_factory=set)

    @property
    def base(self) -> str:
        return self.stack.base_url


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    log_dir = tmp_path_factory.mktemp("up")
    with stack(PROFILE, env=env, log_dir=log_dir, ready_timeout_s=START_TIMEOUT_S) as running:
        watched = Up(running)
        yield watched
    # every worker it started, those scaled away meanwhile too: their ports refuse connections
    for url in watched.worker_urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)


@dataclass
class Watch:
    """Samples GET /admin/pools every 0.1 s while a phase runs."""

    samples: list[dict[str, Any]] = field(default_factory=list)

    def peak(self, pool: str, *states: str) -> int:
        return max(sum(s[pool]["replicas"][st] for st in states) for s in self.samples)

    def low(self, pool: str, *states: str) -> int:
        return min(sum(s[pool]["replicas"][st] for st in states) for s in self.samples)

    def decisions(self, pool: str) -> list[dict[str, Any]]:
        seen: dict[float, dict[str, Any]] = {}
        for sample in self.samples:
            for decision in sample[pool]["decisions"]:
                seen[decision["at"]] = decision
        return [seen[at] for at in sorted(seen)]


async def admin_pools(client: httpx.AsyncClient, up: Up) -> dict[str, Any]:
    response = await client.get(
        f"{up.base}/admin/pools", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    up.worker_urls.update(e["url"] for pool in view.values() for e in pool["endpoints"])
    return view


async def watching(client: httpx.AsyncClient, up: Up, watch: Watch) -> None:
    while True:
        watch.samples.append(await admin_pools(client, up))
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def clients(up: Up) -> AsyncIterator[tuple[httpx.AsyncClient, openai.AsyncOpenAI]]:
    async with (
        httpx.AsyncClient(timeout=10) as http,
        openai.AsyncOpenAI(
            base_url=f"{up.base}/v1", api_key="unused", max_retries=0, timeout=120
        ) as api,
    ):
        yield http, api


async def settle(client: httpx.AsyncClient, up: Up, prefill: int, decode: int) -> None:
    """Wait (bounded) until the pools have exactly these replicas, all ready, none queued."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = await admin_pools(client, up)
        counts = {name: view[name]["replicas"] for name in ("prefill", "decode")}
        if (
            counts["prefill"] == {"starting": 0, "ready": prefill, "draining": 0, "failed": 0}
            and counts["decode"] == {"starting": 0, "ready": decode, "draining": 0, "failed": 0}
            and view["prefill"]["concurrency"] == view["decode"]["concurrency"] == 0
        ):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"pools did not settle at prefill={prefill}, decode={decode}: {counts}")


async def chat(api: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> tuple[str, int]:
    raw = await api.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    response = raw.parse()
    assert response.usage is not None
    return raw.headers["x-pdserve-route"], response.usage.completion_tokens


async def complete(api: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> tuple[str, int]:
    raw = await api.completions.with_raw_response.create(
        model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    response = raw.parse()
    assert response.usage is not None
    return raw.headers["x-pdserve-route"], response.usage.completion_tokens


async def during(client: httpx.AsyncClient, up: Up, work: Any) -> tuple[Watch, Any]:
    watch = Watch()
    watcher = asyncio.create_task(watching(client, up, watch))
    try:
        result = await work
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return watch, result


async def test_long_output_burst_scales_decode_while_prefill_stays(up: Up) -> None:
    async with clients(up) as (client, api):
        await long_output_burst(up, client, api)


async def long_output_burst(up: Up, client: httpx.AsyncClient, api: openai.AsyncOpenAI) -> None:
    await settle(client, up, prefill=0, decode=1)
    # 32 short chats x 200 tokens: concurrency 32 / target 4 = 8 -> panic, x2 per step to max 6
    burst = asyncio.gather(*(chat(api, f"story {i}", 200) for i in range(32)))
    watch, results = await during(client, up, burst)
    assert results == [("local", 200)] * 32  # none lost, every one complete
    assert watch.peak("decode", "ready") >= 4
    assert watch.peak("prefill", "ready", "starting", "draining") == 0
    ups = [d for d in watch.decisions("decode") if d["direction"] == "up"]
    assert ups and "concurrency" in ups[0]["reason"] and ups[0]["panic"]


async def test_long_prompt_burst_scales_prefill_while_decode_stays(up: Up) -> None:
    async with clients(up) as (client, api):
        await long_prompt_burst(up, client, api)


async def long_prompt_burst(up: Up, client: httpx.AsyncClient, api: openai.AsyncOpenAI) -> None:
    await settle(client, up, prefill=0, decode=1)
    # 16 prompts x ~6000 tokens, 1 output token: 96,000 queued tokens / 20,000 tok/s = 4.8 s of
    # backlog / 0.5 s target -> ~10 replicas, up from zero then x2 per step, max 4
    burst = asyncio.gather(*(complete(api, f"{i} {LONG_PROMPT}", 1) for i in range(16)))
    watch, results = await during(client, up, burst)
    assert results == [("disaggregated", 1)] * 16
    assert watch.peak("prefill", "ready") >= 2
    assert watch.low("decode", "ready") == watch.peak("decode", "ready", "starting") == 1
    ups = [d for d in watch.decisions("prefill") if d["direction"] == "up"]
    assert ups and "backlog" in ups[0]["reason"]


async def test_idle_returns_to_minimum_and_prefill_to_zero(up: Up) -> None:
    # stable window 4 s, then 2 s down delay, then -1 per decision; prefill after 4 s of grace
    async with clients(up) as (client, _):
        await settle(client, up, prefill=0, decode=1)
        view = await admin_pools(client, up)
    assert view["prefill"]["desired"] == 0 and view["decode"]["desired"] == 1


async def test_request_arriving_at_zero_is_held_and_served(up: Up) -> None:
    async with clients(up) as (client, api):
        await held_at_zero(up, client, api)


async def held_at_zero(up: Up, client: httpx.AsyncClient, api: openai.AsyncOpenAI) -> None:
    await settle(client, up, prefill=0, decode=1)
    before = (await client.get(f"{up.base}/metrics")).text
    started = time.monotonic()
    watch, result = await during(client, up, complete(api, LONG_PROMPT[:700], 4))
    elapsed = time.monotonic() - started
    assert result == ("disaggregated", 4)
    assert elapsed >= 1.0  # it waited for the prefill worker's 1 s cold start
    wake = [d for d in watch.decisions("prefill") if d["current"] == 0 and d["desired"] == 1]
    # decided at once (a held request wakes the autoscaler), not at the next stable window
    assert wake and wake[0]["at"] - started < 0.5, wake
    after = (await client.get(f"{up.base}/metrics")).text
    assert startups(after, "prefill") == startups(before, "prefill") + 1


def startups(metrics: str, pool: str) -> float:
    prefix = f'pdserve_replica_startup_seconds_count{{pool="{pool}"}}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix)
    )
