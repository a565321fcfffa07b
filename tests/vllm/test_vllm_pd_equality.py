"""The central correctness test: greedy tokens through prefill -> NIXL -> decode equal a single
worker's, and the decode worker really pulled the KV (vLLM counts it as external_kv_transfer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import OpenAI

from pdserve.disagg import decode_request, kv_params_of, prefill_request

pytestmark = pytest.mark.vllm

MAX_TOKENS = 24
PROMPT_LENGTHS = [1, 127, 128, 129, 500, 1500]  # CPU block size is 128
CHAT_OVERHEAD = 3  # "<|user|>" + "\n" + "<|assistant|>" around the content
EXTERNAL = "vllm:prompt_tokens_by_source_total"


def prompt_text(length: int, salt: str) -> str:
    """`length` printable ASCII characters (= tokens: the tiny tokenizer is one per byte),
    unique per salt so no worker serves it from its prefix cache."""
    rng = random.Random(f"{salt}/{length}")
    return "".join(chr(rng.randrange(32, 127)) for _ in range(length))


@dataclass(frozen=True)
class Output:
    text: str
    token_ids: list[int]


def body_for(api: str, length: int, stream: bool) -> dict[str, Any]:
    salt = f"{api}-{stream}"
    common: dict[str, Any] = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0}
    if api == "chat":
        content = prompt_text(max(length - CHAT_OVERHEAD, 1), salt)
        body = {**common, "messages": [{"role": "user", "content": content}]}
    else:
        body = {**common, "prompt": prompt_text(length, salt)}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


EXTRA_KEYS = ("kv_transfer_params",)


def call(base_url: str, body: dict[str, Any]) -> Output:
    """One request through the official openai client; vLLM extras go in extra_body."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)
    params = {k: v for k, v in body.items() if k not in EXTRA_KEYS}
    extra = {k: body[k] for k in EXTRA_KEYS if k in body}
    extra.update({"return_token_ids": True, "ignore_eos": True})
    create = client.chat.completions.create if "messages" in body else client.completions.create
    response = create(**params, extra_body=extra)
    if not body.get("stream"):
        choice = response.choices[0]
        text = choice.message.content if "messages" in body else choice.text
        return Output(text or "", list(choice.model_extra["token_ids"]))
    text, token_ids = [], []
    for chunk in response:
        for choice in chunk.choices:
            piece = choice.delta.content if "messages" in body else choice.text
            text.append(piece or "")
            token_ids.extend(choice.model_extra.get("token_ids") or [])
    return Output("".join(text), token_ids)


def prefill(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(f"{base_url}{path}", json=prefill_request(body), timeout=120)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def workers(cluster):
    return cluster.require("prefill", "decode", "both")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_disaggregated_greedy_equals_one_worker(workers, length: int, api: str, stream: bool):
    body = body_for(api, length, stream)
    expected = call(workers["both"].url, body)
    assert len(expected.token_ids) == MAX_TOKENS
    assert len(set(expected.token_ids)) > MAX_TOKENS // 3  # varied output: equality can fail

    decode = workers["decode"]
    pulled_before = decode.metric(EXTERNAL, source="external_kv_transfer")
    prefill_response = prefill(workers["prefill"].url, body)
    params = kv_params_of(prefill_response)
    assert params is not None and params["do_remote_prefill"] is True
    assert params["remote_block_ids"]
    got = call(decode.url, decode_request(body, prefill_response))
    pulled = decode.metric(EXTERNAL, source="external_kv_transfer") - pulled_before

    assert got == expected
    if length > 1:
        assert pulled > 0, "the decode worker computed the prompt itself: no KV moved"
