"""What the gateway records of a request, over real simulated worker processes: the span tree of
a disaggregated request and the trace context each worker received, the request metrics with
their route reasons and per-token ITL, the pools' KV transfer counters scraped off the workers,
the JSON log line, a prefill hop that falls back, and label values that stay bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pdserve.gateway.request_log import REQUEST_LOGGER, JsonFormatter, RequestLog
from pdserve.gateway.tracing import Tracing
from pdserve.pools.worker_counters import parse_worker_counters
from tests.support.gateway import running_app, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LONG = "The quick brown fox jumps over the lazy dog. " * 4  # 180 tokens >= threshold 64
MAX_TOKENS = 8
Gateway = tuple[FastAPI, httpx.AsyncClient, InMemorySpanExporter]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    exporter = InMemorySpanExporter()
    async with running_app("gw-disaggregated", tracing=Tracing.exporting(exporter)) as pair:
        yield pair[0], pair[1], exporter


def _body(prompt: str = LONG, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


async def _stream(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> list[str]:
    body = _body(stream=True, stream_options={"include_usage": True}, **extra)
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as answer:
        assert answer.status_code == 200
        return [line async for line in answer.aiter_lines() if line.startswith("data: ")]


def _sample(text: str, name: str, **labels: str) -> float:
    """One series' value in Prometheus text (0 when absent); labels are matched as a subset."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


async def _received(app: FastAPI, pool: str, request_id: str) -> dict[str, Any]:
    """What the pool's simulated worker recorded of the request (its `/sim/received`)."""
    replica = app.state.gateway.manager.pools[pool].serving()[0]
    async with httpx.AsyncClient() as http:
        seen = (await http.get(f"{replica.url}/sim/received")).json()
    return next(entry for entry in seen if entry["request_id"] == request_id)


def _spans(exporter: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    return {span.name: span for span in spans}


async def test_a_disaggregated_request_is_one_trace_carried_to_both_workers(
    gateway: Gateway,
) -> None:
    app, client, exporter = gateway
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    request_id = secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{client_span}-01", "x-request-id": request_id}
    await _stream(client, headers)
    await until(lambda: "POST /v1/completions" in _spans(exporter, int(trace_id, 16)), 5)
    spans = _spans(exporter, int(trace_id, 16))
    names = {"queue", "route", "prefill", "decode", "first_token", "stream"}
    assert set(spans) == names | {"POST /v1/completions"}
    root = spans["POST /v1/completions"]
    assert root.parent is not None and root.parent.span_id == int(client_span, 16)
    parents = {name: spans[name].parent for name in names}
    under = {name: p.span_id if p else None for name, p in parents.items()}
    root_id, decode_id = root.context.span_id, spans["decode"].context.span_id
    assert under == {
        "queue": root_id,
        "route": root_id,
        "prefill": root_id,
        "decode": root_id,
        "first_token": decode_id,
        "stream": decode_id,
    }
    route = spans["route"].attributes or {}
    assert (route["pdserve.route"], route["pdserve.route.cause"]) == (
        "disaggregated",
        "within_budget",
    )
    assert "threshold 64" in str(route["pdserve.route.reason"])
    assert (root.attributes or {})["gen_ai.usage.output_tokens"] == MAX_TOKENS
    for span in spans.values():  # each step inside the request's own time
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    for pool in ("prefill", "decode"):  # each worker got the context of its own hop span
        hop = format(spans[pool].context.span_id, "016x")
        got = (await _received(app, pool, request_id))["traceparent"]
        assert got == f"00-{trace_id}-{hop}-01", pool


async def test_request_metrics_carry_model_route_reason_and_tokens(gateway: Gateway) -> None:
    app, client, _ = gateway
    before = await _metrics(client)
    await _stream(client, {})
    short = await client.post("/v1/completions", json=_body("hello"))
    assert short.status_code == 200 and short.headers["x-pdserve-route"] == "local"
    after = await _metrics(client)

    def added(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    disagg = {"model": "tiny", "route": "disaggregated"}
    local = {"model": "tiny", "route": "local"}
    assert added("pdserve_route_decisions_total", reason="within_budget", **disagg) == 1
    assert added("pdserve_route_decisions_total", reason="short_prompt", **local) == 1
    assert added("pdserve_requests_total", status="200", **disagg) == 1
    assert added("pdserve_generation_tokens_total", **disagg) == MAX_TOKENS  # from usage
    assert added("pdserve_generation_tokens_total", **local) == MAX_TOKENS
    # a gap per token after the first chunk's (how many a read carries is up to the network;
    # the per-token split itself is tests/gateway/test_telemetry.py's)
    assert 0 <= added("pdserve_itl_seconds_count", **disagg) <= MAX_TOKENS - 1
    assert added("pdserve_e2e_request_latency_seconds_count", **disagg) == 1
    assert added("pdserve_ttft_seconds_count", **local) == 1
    assert added("pdserve_queue_wait_seconds_count", **local) == 1
    assert added("pdserve_prompt_tokens_total", **local) >= 1
    assert added("pdserve_prefill_hop_seconds_count", model="tiny") == 1


async def test_pool_kv_transfers_come_from_the_decode_workers_nixl_histograms(
    gateway: Gateway,
) -> None:
    app, client, _ = gateway
    decode = app.state.gateway.manager.pools["decode"].serving()[0]

    async def on_worker() -> float:  # the decode worker's own vllm:nixl_xfer_time_seconds
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{decode.url}/metrics")).text
        return parse_worker_counters(text).xfer_seconds.count

    async def on_gateway() -> float:
        text = await _metrics(client)
        return _sample(text, "pdserve_pool_kv_transfer_seconds_count", pool="decode")

    before = await on_worker()
    await _stream(client, {})
    pulled = await on_worker()
    assert pulled == before + 1  # the decode worker pulled this request's KV
    for _ in range(100):  # the gateway scrapes it every 0.2 s
        if await on_gateway() == pulled:
            break
        await asyncio.sleep(0.1)
    assert await on_gateway() == pulled
    text = await _metrics(client)
    assert _sample(text, "pdserve_pool_kv_transfer_bytes_sum", pool="decode") > 0
    assert 'pdserve_pool_kv_transfer_seconds_bucket{le="+Inf",pool="decode"}' in text
    # the simulated worker keeps no prefix cache: queries counted, no hits
    assert _sample(text, "pdserve_pool_prefix_cache_queries_total", pool="prefill") > 0
    assert _sample(text, "pdserve_pool_prefix_cache_hit_ratio", pool="prefill") == 0


async def test_the_json_log_line_of_a_request(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    app, client, _ = gateway
    telemetry = app.state.gateway.forwarder.telemetry
    text_log, telemetry.log = telemetry.log, RequestLog("json")
    try:
        with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
            await _stream(client, {"x-request-id": "log-me"})
    finally:
        telemetry.log = text_log
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == REQUEST_LOGGER]
    line = json.loads(lines[-1])
    assert line["event"] == "request" and line["id"] == "log-me"
    assert (line["model"], line["route"], line["reason"]) == (
        "tiny",
        "disaggregated",
        "within_budget",
    )
    assert line["pools"] == ["prefill", "decode"]
    assert [r.split("-")[0] for r in line["replicas"]] == ["prefill", "decode"]
    assert line["status"] == "200" and line["completion_tokens"] == MAX_TOKENS
    assert 0 < line["ttft_s"] <= line["e2e_s"] and line["prompt_tokens"] > 64
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])


def _series(text: str) -> set[str]:
    """Every series (name and labels) but histogram buckets."""
    return {
        line.rsplit(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#") and "_bucket{" not in line
    }


async def test_label_values_stay_bounded_whatever_clients_send(gateway: Gateway) -> None:
    app, client, _ = gateway

    async def burst() -> None:
        for i in range(12):
            headers = {
                "x-request-id": secrets.token_hex(8),
                "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
            }
            unknown = _body(f"hello {i}") | {"model": f"model-{secrets.token_hex(4)}"}
            assert (await client.post("/v1/completions", json=unknown)).status_code == 404
            bad = {"model": secrets.token_hex(4), "prompt": 7}
            assert (await client.post("/v1/completions", json=bad)).status_code == 400
            ok = _body(f"hi {secrets.token_hex(4)}", user=secrets.token_hex(4))
            assert (
                await client.post("/v1/completions", json=ok, headers=headers)
            ).status_code == 200

    await burst()
    first = _series(await _metrics(client))
    await burst()  # as many new names, ids and traces again: no new series
    second = _series(await _metrics(client))
    assert second == first
    models = set(re.findall(r'model="([^"]*)"', "\n".join(second)))
    assert models <= {"tiny", "none"}


async def test_a_failed_prefill_hop_is_counted_with_its_reason() -> None:
    async with running_app("gw-prefill-fails") as (app, client):
        answer = await client.post("/v1/completions", json=_body())
        assert answer.status_code == 200
        assert answer.headers["x-pdserve-route"] == "local"  # prefilled on the decode worker
        text = await _metrics(client)
    labels = {"model": "tiny"}
    assert _sample(text, "pdserve_prefill_fallbacks_total", reason="bad_status", **labels) == 1
    assert (
        _sample(text, "pdserve_route_decisions_total", route="local", reason="prefill_failed") == 1
    )
