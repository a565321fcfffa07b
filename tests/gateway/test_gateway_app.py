"""The gateway in-process (httpx ASGI transport) over real simulated worker processes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from pdserve.policies.types import ScaleDecision
from tests.support.gateway import running_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

KEY, ADMIN = "test-key", "admin-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = "The quick brown fox jumps over the lazy dog. " * 4  # 180 tokens >= threshold 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    env = {"PDSERVE_API_KEYS": KEY, "PDSERVE_ADMIN_TOKEN": ADMIN}
    async with running_app("gw-disaggregated", env) as pair:
        yield pair


def _completion(prompt: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, **extra}


BAD_REQUESTS = [
    # (name, path, raw body or JSON, headers, status, error code)
    ("malformed json", "/v1/completions", b'{"model": "tiny", ', AUTH, 400, "invalid_json"),
    ("wrong type", "/v1/completions", _completion(max_tokens="8"), AUTH, 400, "invalid_value"),
    ("prompt missing", "/v1/completions", {"model": "tiny"}, AUTH, 400, "invalid_value"),
    ("unknown model", "/v1/completions", _completion(model="gpt-9"), AUTH, 404, "model_not_found"),
    (
        "negative max_tokens",
        "/v1/completions",
        _completion(max_tokens=-5),
        AUTH,
        400,
        "invalid_value",
    ),
    ("oversized body", "/v1/completions", _completion("x" * 70_000), AUTH, 413, "body_too_large"),
    # 20 * 45 bytes = 900... the tiny tokenizer is one token a byte: 2100 > 2048
    (
        "prompt over context",
        "/v1/completions",
        _completion("y" * 2100),
        AUTH,
        400,
        "context_length_exceeded",
    ),
    (
        "max_tokens over context",
        "/v1/completions",
        _completion("z" * 2000, max_tokens=100),
        AUTH,
        400,
        "context_length_exceeded",
    ),
    (
        "chat without messages",
        "/v1/chat/completions",
        {"model": "tiny", "messages": []},
        AUTH,
        400,
        "invalid_value",
    ),
    ("missing key", "/v1/completions", _completion(), {}, 401, "no_api_key"),
    (
        "invalid key",
        "/v1/completions",
        _completion(),
        {"Authorization": "Bearer nope"},
        401,
        "invalid_api_key",
    ),
    ("admin without token", "/admin/pools", None, AUTH, 401, "unauthorized"),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "code"),
    BAD_REQUESTS,
    ids=[row[0] for row in BAD_REQUESTS],
)
async def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    gateway: tuple[FastAPI, httpx.AsyncClient],
    name: str,
    path: str,
    body: object,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    _, client = gateway
    if body is None:
        response = await client.get(path, headers=headers)
    else:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await client.post(
            path, content=raw, headers={**headers, "Content-Type": "application/json"}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    after = await client.post("/v1/completions", json=_completion(), headers=AUTH)
    assert after.status_code == 200
    assert after.json()["choices"][0]["text"]


async def test_short_prompt_is_local_long_is_disaggregated_with_equal_tokens(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = gateway
    short = await client.post("/v1/completions", json=_completion("hi"), headers=AUTH)
    assert short.headers["x-pdserve-route"] == "local"
    assert short.headers["x-pdserve-profile"] == "gw-disaggregated"
    long = await client.post("/v1/completions", json=_completion(LONG), headers=AUTH)
    assert long.status_code == 200
    assert long.headers["x-pdserve-route"] == "disaggregated"
    assert long.json()["usage"]["prompt_tokens"] == len(LONG)  # byte tokenizer, no BOS
    decode = app.state.gateway.manager.pools["decode"].serving()[0]
    async with httpx.AsyncClient(base_url=decode.url, timeout=30) as direct:
        alone = await direct.post("/v1/completions", json=_completion(LONG))
    assert long.json()["choices"][0]["text"] == alone.json()["choices"][0]["text"]


async def test_client_kv_transfer_params_are_stripped(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = gateway
    evil = {
        "do_remote_prefill": True,
        "remote_host": "10.9.9.9",
        "remote_port": 1,
        "remote_block_ids": [[1]],
        "remote_engine_id": "x",
        "remote_request_id": "y",
    }
    plain = await client.post("/v1/completions", json=_completion(LONG), headers=AUTH)
    steered = await client.post(
        "/v1/completions", json=_completion(LONG, kv_transfer_params=evil), headers=AUTH
    )
    assert steered.status_code == 200
    assert steered.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]


async def test_chat_streaming_with_usage(gateway: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = gateway
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": LONG}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-pdserve-route"] == "disaggregated"
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text) == 6
    assert chunks[-1]["usage"]["completion_tokens"] == 6


async def test_metrics_models_and_admin(gateway: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = gateway
    await client.post("/v1/completions", json=_completion(LONG), headers=AUTH)
    decision = ScaleDecision("decode", 1, 1, "concurrency 0.0 within target")
    app.state.gateway.manager.record_decision(decision)
    text = (await client.get("/metrics")).text
    assert 'pdserve_scale_decisions_total{direction="none",pool="decode"} 1.0' in text
    for name in (
        'pdserve_requests_total{model="tiny",route="disaggregated",status="200"}',
        'pdserve_pool_replicas{pool="decode",state="ready"} 1.0',
        'pdserve_pool_desired_replicas{pool="prefill"} 1.0',
        "pdserve_pool_queue_depth",
        "pdserve_pool_concurrency",
        'pdserve_pool_queued_prompt_tokens{pool="prefill"}',
        "pdserve_ttft_seconds_bucket",
        "pdserve_prefill_hop_seconds_count",
        'pdserve_replica_startup_seconds_count{pool="decode"} 1.0',
    ):
        assert name in text, name
    models = (await client.get("/v1/models", headers=AUTH)).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    pools = (await client.get("/admin/pools", headers=admin)).json()
    assert pools["decode"]["last_decision"]["reason"] == "concurrency 0.0 within target"
    assert pools["decode"]["replicas"]["ready"] == 1
    assert pools["prefill"]["prefill_tokens_per_s"] > 0
    active = (await client.get("/admin/profile", headers=admin)).json()
    assert (active["active"], active["pending"]) == ("gw-disaggregated", None)
