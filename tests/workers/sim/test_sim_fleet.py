"""Sixteen simulated workers at once on this machine, serving a mixed load through the official
openai client: completions and chat, streamed and not, P/D hops between them."""

from __future__ import annotations

import asyncio
import random

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve import disagg
from pdserve.workers.sim.launch import SimFleet, wait_healthy

pytestmark = pytest.mark.integration

WORKERS = 16


async def _one(api: openai.AsyncOpenAI, rng: random.Random) -> int:
    """One request of a random kind; the completion tokens it got."""
    prompt = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(10, 900)))
    max_tokens = rng.randint(1, 40)
    if rng.random() < 0.5:
        messages = [{"role": "user", "content": prompt}]
        if rng.random() < 0.5:
            chat = await api.chat.completions.create(
                model="tiny", messages=messages, max_tokens=max_tokens
            )
            assert chat.usage is not None
            return chat.usage.completion_tokens
        got = 0
        stream = await api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=max_tokens, stream=True
        )
        async for chunk in stream:
            got += sum(1 for c in chunk.choices if c.delta.content)
        return got
    done = await api.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens)
    assert done.usage is not None and done.usage.completion_tokens == len(done.choices[0].text)
    return done.usage.completion_tokens


async def _hop(prefill: openai.AsyncOpenAI, decode: openai.AsyncOpenAI, n: int) -> int:
    body = {"model": "tiny", "prompt": f"hop {n} " * 50, "max_tokens": 8}
    pre = disagg.prefill_request(body)
    kv = pre.pop(disagg.KV_PARAMS_KEY)
    first = await prefill.completions.create(**pre, extra_body={disagg.KV_PARAMS_KEY: kv})
    dec = disagg.decode_request(body, first.model_dump())
    kv = dec.pop(disagg.KV_PARAMS_KEY)
    done = await decode.completions.create(**dec, extra_body={disagg.KV_PARAMS_KEY: kv})
    assert done.choices[0].text[0] == first.choices[0].text
    return 8


async def _generated(url: str) -> float:
    async with httpx.AsyncClient() as raw:
        text = (await raw.get(f"{url}/metrics", timeout=10)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:generation_tokens_total":
                return sample.value
    raise KeyError("vllm:generation_tokens_total")


async def test_sixteen_workers_serve_a_mixed_load() -> None:
    with SimFleet() as fleet:
        spawned = [fleet.spawn("prefill" if i < 4 else "decode", ["--time-scale", "2"])
                   for i in range(WORKERS)]  # fmt: skip
        for url, process in spawned:
            wait_healthy(url, 120, process)
        apis = [openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                                   timeout=60) for url, _ in spawned]  # fmt: skip
        rng = random.Random(7)
        jobs = [_one(apis[i % WORKERS], rng) for i in range(96)]
        jobs += [_hop(apis[i % 4], apis[4 + i % 12], i) for i in range(24)]
        got = await asyncio.wait_for(asyncio.gather(*jobs), timeout=240)
        totals = await asyncio.gather(*(_generated(url) for url, _ in spawned))
        # prefill workers generate the hops' first tokens too: 24 of them
        assert sum(totals) == sum(got) + 24
        assert all(process.poll() is None for _, process in spawned)
