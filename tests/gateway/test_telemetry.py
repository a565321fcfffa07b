"""The gateway's per-request telemetry without servers: tokens and per-token ITL from relayed
chunks, the trace context passed on when not tracing, OTLP only when configured, the log line."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.proxy import Exchange
from pdserve.gateway.request_log import JsonFormatter, RequestLog, RequestRecord, logging_config
from pdserve.gateway.telemetry import Telemetry, chunk_tokens, usage_tokens
from pdserve.gateway.tracing import Tracing, otlp_endpoint
from pdserve.pools.replica import Replica
from tests.support.fakes import one_pool_profile

pytestmark = pytest.mark.unit


def _event(body: str) -> bytes:
    return f"data: {body}\n\n".encode()


TOKEN = _event('{"choices":[{"index":0,"text":"a"}]}')
ROLE = _event('{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}')
DONE = _event("[DONE]")


def _with_usage(completion: int, choices: str = '[{"index":0,"text":"abc"}]') -> bytes:
    return _event(f'{{"choices":{choices},"usage":{{"completion_tokens":{completion}}}}}')


CHUNKS = [
    # chunk, tokens counted before it -> (tokens to count, tokens to time)
    (TOKEN, 0, (1, 1)),
    (TOKEN + TOKEN, 3, (2, 2)),  # two events in one read
    (ROLE, 0, (0, 0)),  # a chat stream's role event carries no token
    (DONE, 8, (0, 0)),
    (_with_usage(7), 4, (3, 3)),  # continuous usage: 7 - 4 = 3 tokens in this chunk
    (_with_usage(8, "[]") + DONE, 8, (0, 0)),  # the final usage event agrees
    (_with_usage(10, "[]") + DONE, 8, (2, 0)),  # earlier chunks carried 2 more: count, not time
    (TOKEN + _with_usage(9, "[]"), 7, (2, 1)),  # a token and the final usage in one read
]


@pytest.mark.parametrize(("chunk", "seen", "expected"), CHUNKS)
def test_tokens_in_a_chunk(chunk: bytes, seen: int, expected: tuple[int, int]) -> None:
    assert chunk_tokens(seen, chunk, first=chunk is ROLE) == expected


def test_usage_of_a_whole_response() -> None:
    body = json.dumps({"choices": [{"text": "x"}], "usage": {"completion_tokens": 5}})
    assert usage_tokens(body.encode()) == 5
    assert usage_tokens(b'{"choices": []}') is None
    assert usage_tokens(b'{"usage": null}') is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _exchange(traceparent: str | None = None) -> Exchange:
    body = {"model": "tiny", "prompt": "hi", "stream": True}
    profile = one_pool_profile()
    return Exchange("/v1/completions", body, "r1", profile, "local", 2, traceparent=traceparent)


def _replica() -> Replica:
    return Replica(ReplicaHandle("decode-1", "decode", "http://w1"))


def _samples(metrics: GatewayMetrics, name: str) -> dict[str, float]:
    metric = next(m for m in metrics.registry.collect() if m.name == name)
    return {s.name: s.value for s in metric.samples if s.labels.get("route") == "local"}


def test_a_chunk_of_several_tokens_counts_each_with_its_share_of_the_gap() -> None:
    clock, metrics = Clock(), GatewayMetrics()
    telemetry = Telemetry(metrics, clock=clock)
    ex = _exchange()
    ex.arrived = clock.now - 0.5
    telemetry.first_token(ex, _with_usage(1))
    clock.now += 0.3
    telemetry.chunk(ex, _with_usage(4))  # 3 tokens in 0.3 s: 0.1 s each
    clock.now += 0.05
    telemetry.chunk(ex, TOKEN)
    telemetry.finish(ex, 200)
    itl = _samples(metrics, "pdserve_itl_seconds")
    assert itl["pdserve_itl_seconds_count"] == 4
    assert itl["pdserve_itl_seconds_sum"] == pytest.approx(0.35)
    buckets = {
        s.labels["le"]: s.value
        for m in metrics.registry.collect()
        if m.name == "pdserve_itl_seconds"
        for s in m.samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.05"] == 1 and buckets["0.1"] == 4  # three at 0.1, one at 0.05
    generated = _samples(metrics, "pdserve_generation_tokens")
    assert generated["pdserve_generation_tokens_total"] == 5
    ttft = _samples(metrics, "pdserve_ttft_seconds")
    assert ttft["pdserve_ttft_seconds_sum"] == pytest.approx(0.5)


def test_the_first_token_after_a_role_event_is_not_an_inter_token_gap() -> None:
    clock, metrics = Clock(), GatewayMetrics()
    telemetry = Telemetry(metrics, clock=clock)
    ex = _exchange()
    telemetry.first_token(ex, ROLE)  # a chat stream's first event: TTFT, no token
    clock.now += 0.01
    telemetry.chunk(ex, TOKEN)
    clock.now += 0.2
    telemetry.chunk(ex, TOKEN)
    telemetry.finish(ex, 200)
    itl = _samples(metrics, "pdserve_itl_seconds")
    assert itl["pdserve_itl_seconds_count"] == 1
    assert itl["pdserve_itl_seconds_sum"] == pytest.approx(0.2)
    assert _samples(metrics, "pdserve_generation_tokens")["pdserve_generation_tokens_total"] == 2


def test_a_request_ends_once() -> None:
    metrics = GatewayMetrics()
    telemetry = Telemetry(metrics, clock=Clock())
    ex = _exchange()
    telemetry.finish(ex, 200)
    telemetry.failed(ex, RuntimeError("after the end"))
    assert _samples(metrics, "pdserve_requests")["pdserve_requests_total"] == 1


def test_without_tracing_the_clients_trace_context_goes_on_unchanged() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    telemetry = Telemetry(GatewayMetrics(), Tracing(None))
    assert telemetry.hop(_exchange(parent), "decode", _replica()) == {"traceparent": parent}
    assert telemetry.hop(_exchange(), "decode", _replica()) == {}


def test_with_tracing_each_hop_gets_its_own_span_as_parent() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(GatewayMetrics(), Tracing.exporting(exporter))
    ex = _exchange("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    telemetry.begin(ex)
    sent = telemetry.hop(ex, "decode", _replica())["traceparent"]
    trace_id, span_id = sent.split("-")[1:3]
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and span_id != "b7ad6b7169203331"
    telemetry.first_token(ex, TOKEN)
    telemetry.finish(ex, 200)
    decode = next(s for s in exporter.get_finished_spans() if s.name == "decode")
    assert format(decode.context.span_id, "016x") == span_id


def test_otlp_export_only_when_a_collector_is_configured() -> None:
    assert otlp_endpoint(None, {}) is None
    assert Tracing.configured(None, {}).tracer is None
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert otlp_endpoint(None, env) == "http://collector:4317"
    assert otlp_endpoint("http://mine:4317", env) == "http://mine:4317"  # the profile's first
    tracing = Tracing.configured(None, env)  # builds the exporter; nothing is sent yet
    try:
        assert tracing.tracer is not None
    finally:
        tracing.close()


def test_the_log_line_as_json_and_as_text(caplog: pytest.LogCaptureFixture) -> None:
    record = RequestRecord(
        id="r1",
        model="tiny",
        route="disaggregated",
        reason="within_budget",
        detail="180 uncached tokens >= threshold 64",
        status="200",
        pools=["prefill", "decode"],
        replicas=["prefill-1", "decode-1"],
        prompt_tokens=180,
        completion_tokens=8,
        ttft_s=0.0123456789,
    )
    with caplog.at_level(logging.INFO, logger="pdserve.requests"):
        RequestLog("json").write(record)
        RequestLog("text").write(record)
    as_json, as_text = caplog.records[-2:]
    line = json.loads(JsonFormatter().format(as_json))
    assert line["event"] == "request" and line["level"] == "info"
    assert line["pools"] == ["prefill", "decode"] and line["ttft_s"] == 0.012346
    assert "fallback" not in line  # unset fields are left out
    text = as_text.getMessage()
    assert text.startswith("request id=r1 model=tiny route=disaggregated reason=within_budget")
    assert 'detail="180 uncached tokens >= threshold 64"' in text
    assert "pools=prefill,decode" in text


def test_the_logging_config_of_both_formats() -> None:
    import logging.config

    for fmt, requests in (("text", "WARNING"), ("json", "INFO")):
        config = logging_config(fmt, "warning")  # type: ignore[arg-type]
        assert config["loggers"]["pdserve.requests"]["level"] == requests
        factory = config["formatters"]["pdserve"].get("()")
        if fmt == "json":
            assert logging.config.DictConfigurator(config).resolve(factory) is JsonFormatter


def test_up_and_gateway_take_a_log_format() -> None:
    from pdserve import profile as profiles
    from pdserve.cli import build_parser, with_log_format

    for command in ("up", "gateway"):
        args = build_parser().parse_args([command, "--profile", "sim", "--log-format", "json"])
        assert args.log_format == "json"
    profile = profiles.load("sim")
    assert with_log_format(profile, None).gateway.log_format == "text"
    assert with_log_format(profile, "json").gateway.log_format == "json"
