"""The simulated worker held to real vLLM: the same small workload against both, then metric
names, types, labels and buckets; response and stream shapes field for field; usage; error
shapes and status codes; P/D params keys; and the `vllm-cpu-tiny` preset's median TTFT and ITL
within 30% of the real worker's.

Real workers come from the vllm tier's session `cluster` (tests/vllm/conftest.py): `both` (a
unified server bound to core 0) for timing and shapes, `prefill` (NixlConnector on) for the
P/D params and NIXL metric families. The timing test runs first and alone on its core.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve import disagg
from pdserve.workers.sim.launch import SimFleet

pytestmark = pytest.mark.vllm

SIM_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prompt_tokens_by_source",
    "vllm:request_success",
    "vllm:nixl_xfer_time_seconds",
    "vllm:nixl_bytes_transferred",
    "vllm:nixl_num_failed_transfers",
    "vllm:nixl_num_kv_expired_reqs",
)
TIMING_PROMPTS = (64, 256, 512, 1024, 128, 768, 384, 1536)  # tokens (one per byte)
TIMING_MAX_TOKENS = 24
TOLERANCE = 0.30


@pytest.fixture(scope="module")
def sim() -> Iterator[dict[str, str]]:
    with SimFleet() as fleet:
        yield {"both": fleet.start("both"), "prefill": fleet.start("prefill")}


@pytest.fixture(scope="module")
def real(cluster: Any) -> dict[str, str]:
    workers = cluster.require("both", "prefill")
    return {name: worker.url for name, worker in workers.items()}


def _timing_prompt(tokens: int, salt: str) -> str:
    # unique text per request, so vLLM's prefix cache never serves it
    rng = random.Random(f"{salt}/{tokens}")
    return "".join(chr(rng.randrange(97, 123)) for _ in range(tokens))


def _measure(url: str, salt: str) -> tuple[float, float]:
    """Median TTFT and median ITL of the timing workload, seen by the openai client."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    api.completions.create(model="tiny", prompt=_timing_prompt(200, salt + "warm"), max_tokens=4)
    ttfts: list[float] = []
    itls: list[float] = []
    for tokens in TIMING_PROMPTS:
        start = time.perf_counter()
        stamps = []
        stream = api.completions.create(model="tiny", prompt=_timing_prompt(tokens, salt),
                                        max_tokens=TIMING_MAX_TOKENS, stream=True)  # fmt: skip
        for chunk in stream:
            if chunk.choices:
                stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - start)
        itls += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(ttfts), statistics.median(itls)


def test_vllm_cpu_tiny_preset_within_30_percent_of_real(cluster: Any, sim: dict[str, str]) -> None:
    # the preset models one worker alone on its core: stop any other real worker first (the
    # prefill worker shares core 0 and one of its NIXL threads spins)
    for name in [name for name in cluster.running if name != "both"]:
        cluster.stop(name)
    both = cluster.require("both")["both"].url
    real_ttft, real_itl = _measure(both, f"real-{time.time()}")
    sim_ttft, sim_itl = _measure(sim["both"], f"sim-{time.time()}")
    report = (f"median TTFT real {real_ttft * 1e3:.1f} ms, sim {sim_ttft * 1e3:.1f} ms; "
              f"median ITL real {real_itl * 1e3:.2f} ms, sim {sim_itl * 1e3:.2f} ms")  # fmt: skip
    print(f"\n[sim conformance] {report}")
    assert abs(sim_ttft - real_ttft) <= TOLERANCE * real_ttft, report
    assert abs(sim_itl - real_itl) <= TOLERANCE * real_itl, report


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, no values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def post(url: str, path: str, body: Any) -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{url}{path}", timeout=120, **kwargs)


def sse(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any] | str]:
    import json

    events: list[dict[str, Any] | str] = []
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


COMPLETION = {"model": "tiny", "prompt": "Conformance of the completion API", "max_tokens": 6}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Conformance chat"}],
        "max_tokens": 6}  # fmt: skip
STREAM = {"stream": True, "stream_options": {"include_usage": True}}
APIS = [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)]


@pytest.mark.parametrize("path,body", APIS, ids=["completion", "chat"])
def test_responses_match_field_for_field_with_equal_usage(
    real: dict[str, str], sim: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    got = {name: post(urls["both"], path, body).json() for name, urls in
           (("real", real), ("sim", sim))}  # fmt: skip
    assert shape(got["sim"]) == shape(got["real"])
    assert list(got["sim"]) == list(got["real"])  # the same key order too
    assert got["sim"]["usage"] == got["real"]["usage"]
    assert got["sim"]["choices"][0]["finish_reason"] == got["real"]["choices"][0]["finish_reason"]


def _stream_shapes(events: list[dict[str, Any] | str]) -> dict[str, Any]:
    """Shapes of the stream's kinds of event: first, middle, last token chunk, usage."""
    chunks = [e for e in events if isinstance(e, dict)]
    tokens = [c for c in chunks if c["choices"]]
    return {
        "first": shape(tokens[0]),
        "middle": shape(tokens[1]),
        "last": shape(tokens[-1]),
        "usage": shape(chunks[-1]),
        "done": events[-1],
        "token_chunks": len(tokens),
        "usage_value": chunks[-1]["usage"],
    }


@pytest.mark.parametrize("path,body", APIS, ids=["completion", "chat"])
def test_streams_match_chunk_for_chunk(
    real: dict[str, str], sim: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    real_stream = _stream_shapes(sse(real["both"], path, {**body, **STREAM}))
    sim_stream = _stream_shapes(sse(sim["both"], path, {**body, **STREAM}))
    assert sim_stream == real_stream


ERRORS: list[tuple[str, str, Any]] = [
    ("unknown-model", "/v1/completions", {"model": "nope", "prompt": "x", "max_tokens": 2}),
    ("negative-max-tokens", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}),
    ("no-prompt", "/v1/completions", {"model": "tiny", "max_tokens": 2}),
    ("prompt-too-long", "/v1/completions", {"model": "tiny", "prompt": "y" * 2100,
                                            "max_tokens": 2}),
    ("max-tokens-too-big", "/v1/completions", {"model": "tiny", "prompt": "x",
                                               "max_tokens": 5000}),
    ("messages-not-a-list", "/v1/chat/completions", {"model": "tiny", "messages": "x"}),
    ("not-json", "/v1/completions", b"not json"),
]  # fmt: skip


@pytest.mark.parametrize("path,body", [(p, b) for _, p, b in ERRORS], ids=[n for n, _, _ in ERRORS])
def test_errors_match_status_type_and_param(
    real: dict[str, str], sim: dict[str, str], path: str, body: Any
) -> None:
    real_resp, sim_resp = post(real["both"], path, body), post(sim["both"], path, body)
    assert sim_resp.status_code == real_resp.status_code
    real_error, sim_error = real_resp.json()["error"], sim_resp.json()["error"]
    assert list(sim_error) == list(real_error) == ["message", "type", "param", "code"]
    assert (sim_error["type"], sim_error["code"]) == (real_error["type"], real_error["code"])
    if real_error["type"] != "Bad Request":  # pydantic's wording differs; its loc is the param
        assert sim_error["param"] == real_error["param"]
        assert sim_error["message"].split(".")[0] == real_error["message"].split(".")[0]


def test_models_list_matches(real: dict[str, str], sim: dict[str, str]) -> None:
    real_models = httpx.get(f"{real['both']}/v1/models", timeout=30).json()
    sim_models = httpx.get(f"{sim['both']}/v1/models", timeout=30).json()
    assert shape(sim_models) == shape(real_models)
    assert sim_models["data"][0]["id"] == real_models["data"][0]["id"]


def test_prefill_kv_transfer_params_match(real: dict[str, str], sim: dict[str, str]) -> None:
    body = {"model": "tiny", "prompt": "Conformance of the P/D hop. " * 12, "max_tokens": 8}
    request = disagg.prefill_request(body)
    real_resp = post(real["prefill"], "/v1/completions", request).json()
    sim_resp = post(sim["prefill"], "/v1/completions", request).json()
    real_kv, sim_kv = disagg.kv_params_of(real_resp), disagg.kv_params_of(sim_resp)
    assert real_kv is not None and sim_kv is not None
    assert list(sim_kv) == list(real_kv)
    assert shape(sim_kv) == shape(real_kv)
    same = ("do_remote_prefill", "do_remote_decode", "remote_num_tokens", "tp_size", "dcp_size",
            "pp_size", "transfer_mode", "remote_blocks_expiry_time")  # fmt: skip
    assert {k: sim_kv[k] for k in same} == {k: real_kv[k] for k in same}
    assert sim_resp["usage"] == real_resp["usage"]


def _families(url: str) -> dict[str, Any]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def _buckets(family: Any) -> list[str]:
    return sorted({s.labels["le"] for s in family.samples if "le" in s.labels}, key=float)


def test_metrics_match_names_types_labels_and_buckets(
    real: dict[str, str], sim: dict[str, str]
) -> None:
    real_families, sim_families = _families(real["prefill"]), _families(sim["prefill"])
    for name in SIM_METRICS:
        real_family, sim_family = real_families[name], sim_families[name]
        assert sim_family.type == real_family.type, name
        assert sim_family.documentation == real_family.documentation, name
        real_labels = {frozenset(s.labels) for s in real_family.samples}
        assert {frozenset(s.labels) for s in sim_family.samples} == real_labels, name
        assert _buckets(sim_family) == _buckets(real_family), name
    sim_own = {name for name in sim_families if name.startswith("vllm:")}
    assert sim_own <= set(real_families), "the sim exports a vllm: name vLLM does not"
