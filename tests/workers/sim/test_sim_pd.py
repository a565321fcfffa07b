"""The P/D hop between simulated workers through pdserve.disagg's transforms (vLLM's protocol):
the same tokens as one worker, the pull frees the prefill's blocks, expiry, failure policy."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve import disagg
from pdserve.workers.sim.launch import SimFleet

pytestmark = pytest.mark.integration


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)


async def send(url: str, body: dict[str, Any]) -> Any:
    """One request through the official client; kv_transfer_params rides in extra_body."""
    body = dict(body)
    extra = (
        {disagg.KV_PARAMS_KEY: body.pop(disagg.KV_PARAMS_KEY)}
        if (disagg.KV_PARAMS_KEY in body)
        else None
    )
    api = client(url)
    if disagg.is_chat(body):
        return await api.chat.completions.create(**body, extra_body=extra)
    return await api.completions.create(**body, extra_body=extra)


async def text_of(url: str, body: dict[str, Any]) -> str:
    """The whole text, streamed or not."""
    if not body.get("stream"):
        resp = await send(url, body)
        choice = resp.choices[0]
        return choice.message.content if disagg.is_chat(body) else choice.text
    pieces = []
    async for chunk in await send(url, body):
        if chunk.choices:
            c = chunk.choices[0]
            pieces.append((c.delta.content or "") if disagg.is_chat(body) else c.text)
    return "".join(pieces)


async def pd_hop(prefill: str, decode: str, body: dict[str, Any]) -> tuple[str, dict]:
    first = await send(prefill, disagg.prefill_request(body))
    params = first.model_dump()
    return await text_of(decode, disagg.decode_request(body, params)), params


async def metric(url: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as raw:
        text = (await raw.get(f"{url}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise KeyError(name)


BODIES = [
    {"model": "tiny", "prompt": "p" * 700, "max_tokens": 20},
    {"model": "tiny", "prompt": "a prompt to stream", "max_tokens": 16, "stream": True,
     "stream_options": {"include_usage": True}, "seed": 5},
    {"model": "tiny", "messages": [{"role": "user", "content": "chat " * 90}], "max_tokens": 12},
    {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 25,
     "stream": True, "seed": 11},
]  # fmt: skip


@pytest.mark.parametrize("body", BODIES, ids=["completion", "stream", "chat", "chat-stream"])
async def test_disaggregated_tokens_equal_one_workers(
    prefill_url: str, decode_url: str, both_url: str, body: dict[str, Any]
) -> None:
    external_before = await metric(
        decode_url, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer"
    )
    hopped, params = await pd_hop(prefill_url, decode_url, body)
    assert hopped == await text_of(both_url, body)
    kv = params[disagg.KV_PARAMS_KEY]
    assert kv["do_remote_prefill"] is True and kv["remote_port"] == int(prefill_url.rsplit(":")[-1])
    external = await metric(
        decode_url, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer"
    )
    assert external - external_before == kv["remote_num_tokens"] - 1
    assert await metric(prefill_url, "vllm:kv_cache_usage_perc") == 0.0  # the pull freed them


async def test_a_stop_string_cuts_the_same_place_on_both_routes(
    prefill_url: str, decode_url: str, both_url: str
) -> None:
    body = {"model": "tiny", "prompt": "stop here", "max_tokens": 40}
    full = await text_of(both_url, body)
    body["stop"] = full[20:22]
    hopped, _ = await pd_hop(prefill_url, decode_url, body)
    assert hopped == await text_of(both_url, body) == full[: full.index(full[20:22])]


async def test_unpulled_blocks_expire_and_decode_recomputes(
    fleet: SimFleet, decode_url: str, both_url: str
) -> None:
    prefill = fleet.start("prefill", ["--kv-lease-s", "0.3"])
    body = {"model": "tiny", "prompt": "expire me " * 30, "max_tokens": 10}
    first = await send(prefill, disagg.prefill_request(body))
    assert await metric(prefill, "vllm:kv_cache_usage_perc") > 0
    await asyncio.sleep(1.0)
    assert await metric(prefill, "vllm:kv_cache_usage_perc") == 0.0
    assert await metric(prefill, "vllm:nixl_num_kv_expired_reqs_total") == 1
    failed = await metric(decode_url, "vllm:nixl_num_failed_transfers_total")
    text = await text_of(decode_url, disagg.decode_request(body, first.model_dump()))
    assert text == await text_of(both_url, body)  # recomputed, never wrong tokens
    assert await metric(decode_url, "vllm:nixl_num_failed_transfers_total") == failed + 1


async def test_fail_policy_fails_the_request(fleet: SimFleet, prefill_url: str) -> None:
    decode = fleet.start("decode", ["--kv-load-failure-policy", "fail"])
    body = {"model": "tiny", "prompt": "pulled twice", "max_tokens": 4}
    params = (await send(prefill_url, disagg.prefill_request(body))).model_dump()
    assert await text_of(decode, disagg.decode_request(body, params))  # first pull works
    with pytest.raises(openai.InternalServerError) as failed:  # the blocks are gone now
        await text_of(decode, disagg.decode_request(body, params))
    assert failed.value.status_code == 500
