"""A simulated worker through the official openai client: responses, streams, usage, errors,
metrics families and types."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve.workers.sim.launch import SimFleet

pytestmark = pytest.mark.integration

REQUIRED_METRICS = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:prompt_tokens_by_source": "counter",
    "vllm:nixl_xfer_time_seconds": "histogram",
}


def client(url: str, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=timeout)


async def test_completion_stream_and_usage_agree(both_url: str) -> None:
    api = client(both_url)
    kwargs = {"model": "tiny", "prompt": "Hello world", "max_tokens": 12, "seed": 3}
    whole = await api.completions.create(**kwargs)
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 12)
    assert whole.choices[0].finish_reason == "length"
    pieces, usage = [], None
    stream = await api.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].text and len(pieces) == 12
    assert usage is not None and usage.total_tokens == 23


async def test_chat_stop_and_seed(both_url: str) -> None:
    api = client(both_url)
    messages = [{"role": "user", "content": "Hi"}]
    full = await api.chat.completions.create(model="tiny", messages=messages, max_tokens=30)
    text = full.choices[0].message.content or ""
    assert full.usage is not None and full.usage.prompt_tokens == 5 and len(text) == 30
    stop = text[10:12]
    cut = await api.chat.completions.create(
        model="tiny", messages=messages, max_tokens=30, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    other = await api.chat.completions.create(
        model="tiny", messages=messages, max_tokens=30, seed=99
    )
    assert other.choices[0].message.content != text


async def test_errors_have_openai_shape_and_vllm_codes(both_url: str) -> None:
    api = client(both_url)
    with pytest.raises(openai.NotFoundError) as missing:
        await api.completions.create(model="nope", prompt="x", max_tokens=2)
    assert missing.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        await api.completions.create(model="tiny", prompt="x", max_tokens=-1)
    assert bad.value.body == {  # type: ignore[comparison-overlap]
        "message": "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
    with pytest.raises(openai.BadRequestError):
        await api.completions.create(model="tiny", prompt="x" * 3000, max_tokens=2)
    async with httpx.AsyncClient() as raw:
        resp = await raw.post(f"{both_url}/v1/completions", content=b"not json")
    assert resp.status_code == 400 and set(resp.json()["error"]) == {
        "message", "type", "param", "code",
    }  # fmt: skip
    # bad input never takes the server down
    assert (await api.models.list()).data[0].id == "tiny"


async def test_metrics_have_vllm_names_and_types(both_url: str) -> None:
    await client(both_url).completions.create(model="tiny", prompt="count me", max_tokens=4)
    async with httpx.AsyncClient() as raw:
        text = (await raw.get(f"{both_url}/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in REQUIRED_METRICS.items():
        assert families[name].type == kind, name
    running = families["vllm:num_requests_running"].samples[0]
    assert running.labels == {"model_name": "tiny", "engine": "0"}
    sources = {s.labels["source"] for s in families["vllm:prompt_tokens_by_source"].samples}
    assert {"local_compute", "local_cache_hit", "external_kv_transfer"} <= sources
    generated = [s for s in families["vllm:generation_tokens"].samples if s.name.endswith("_total")]
    assert generated[0].value >= 4


async def test_a_long_prefill_stalls_the_running_stream(fleet: SimFleet) -> None:
    # A100 timing, 8B model: a decode step is ~14 ms; an 8,000-token prompt is one ~0.9 s step
    url = fleet.start("both", ["--timing", "a100", "--max-model-len", "16384"])
    api = client(url)
    stamps: list[float] = []

    async def stream() -> None:
        response = await api.completions.create(
            model="tiny", prompt="running decode", max_tokens=80, stream=True
        )
        async for _ in response:
            stamps.append(asyncio.get_running_loop().time())

    running = asyncio.create_task(stream())
    await asyncio.sleep(0.3)
    await api.completions.create(model="tiny", prompt="z" * 8000, max_tokens=1)
    await asyncio.wait_for(running, 30)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    assert gaps[-1] > 0.5 and gaps[-1] > 10 * gaps[len(gaps) // 2]


async def test_a_chat_stream_sends_its_role_with_the_first_token_not_before(
    fleet: SimFleet,
) -> None:
    # vLLM's chat stream sends the assistant role in its first iteration over the engine's
    # outputs, i.e. after the prefill; a role sent on arrival made the gateway's chat TTFT on
    # simulated workers read near 0. A 0.5 s slower prefill step is the lower bound here.
    url = fleet.start("both", ["--fault-prefill-slow", "0.5"])
    api = client(url)
    start = asyncio.get_running_loop().time()
    arrivals = []
    response = await api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    async for chunk in response:
        if chunk.choices:
            arrivals.append((chunk.choices[0].delta.role, asyncio.get_running_loop().time()))
    assert arrivals[0][0] == "assistant"
    assert arrivals[0][1] - start >= 0.5  # not before the prefill ended
