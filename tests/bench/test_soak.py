"""The soak under faults (bench/soak.py): its outcome classes, its checks, its fault plumbing,
and the short mode itself through `pdserve up` on simulated workers, every request ending in a
right answer or a clean error while workers are killed, hung, slowed and blocked and the
profile switches live."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest

from bench import soak, soak_checks, soak_faults, soak_load
from pdserve.processes import free_port

CHAT = soak_load.Spec("chat-0", "chat", "/v1/chat/completions", {"stream": True})
WHOLE = soak_load.Spec("long-1", "long", "/v1/completions", {"stream": False})


def _sse(*events: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def _delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


ERROR = {
    "error": {"message": "worker failed", "type": "x", "param": None, "code": "replica_failed"}
}


async def _outcome(spec: soak_load.Spec, status: int, content: bytes) -> soak_load.Outcome:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"x-pdserve-route": "local"})

    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await soak_load.send(client, spec, "abc", timeout_s=5)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "status", "content", "kind", "counted"),
    [
        (CHAT, 200, _sse({"choices": [{"delta": {"role": "assistant"}}]}, _delta("ab"),
                         _delta("c")), "completed", "200"),
        (CHAT, 200, _sse(_delta("ab"), _delta("d")), "wrong_tokens", "200"),
        (CHAT, 200, _sse(_delta("ab"), ERROR), "error_event", "502"),
        (CHAT, 200, _sse(_delta("ab"), {"error": "boom"}), "bad_error_shape", "502"),
        (CHAT, 200, _sse(_delta("ab"), done=False), "truncated", "200"),
        (CHAT, 503, json.dumps(ERROR).encode(), "error_status", "503"),
        (CHAT, 500, json.dumps(ERROR).encode(), "http_500", "500"),
        (CHAT, 502, b'{"detail": "bad gateway"}', "bad_error_shape", "502"),
        (WHOLE, 200, json.dumps({"choices": [{"text": "abc"}]}).encode(), "completed", "200"),
        (WHOLE, 200, json.dumps({"choices": [{"text": "abd"}]}).encode(), "wrong_tokens", "200"),
    ],
)  # fmt: skip
async def test_every_response_is_classified_and_only_clean_ends_are_good(
    spec: soak_load.Spec, status: int, content: bytes, kind: str, counted: str
) -> None:
    got = await _outcome(spec, status, content)
    assert (got.kind, got.counted_status, got.route) == (kind, counted, "local")
    assert got.good == (kind in ("completed", "error_status", "error_event"))


@pytest.mark.unit
async def test_a_request_that_never_ends_is_a_timeout_and_a_dropped_one_a_transport_error() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        import asyncio

        await asyncio.sleep(30)
        raise AssertionError("not reached")

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    for handler, kind in ((hang, "timeout"), (drop, "transport_error")):
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            got = await soak_load.send(client, CHAT, "abc", timeout_s=0.2)
        assert got.kind == kind and not got.good


@pytest.mark.unit
def test_specs_cover_both_routes_and_are_greedy() -> None:
    plan = soak_load.specs(long_chars=1100)
    assert Counter(s.kind for s in plan) == {"chat": 4, "long": 4, "long_chat": 4}
    assert all(s.body["temperature"] == 0 for s in plan)
    longs = [s for s in plan if s.kind == "long"]
    assert all(len(s.body["prompt"]) == 1100 for s in longs)
    assert {s.stream for s in longs} == {True, False}
    assert len({json.dumps(s.body) for s in plan}) == len(plan)


@pytest.mark.unit
def test_gateway_counts_read_the_prometheus_page_and_compare_with_the_client() -> None:
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter(
        "pdserve_requests", "x", ["route", "status"], registry=registry
    )
    counter.labels("local", "200").inc(3)
    counter.labels("disaggregated", "502").inc()
    counter.labels("none", "503").inc(0)
    page = prometheus_client.generate_latest(registry).decode()
    counts = soak_checks.gateway_counts(page)
    assert counts == {"disaggregated 502": 1, "local 200": 3}
    client = [("local", "200")] * 3 + [("disaggregated", "502")]
    assert soak_checks.client_counts(client) == counts
    assert soak_checks.client_counts(client[1:]) != counts  # one request the client lost


@pytest.mark.unit
def test_rss_growth_compares_the_second_quarter_with_the_last() -> None:
    flat = [(float(t), 100 + (t % 2)) for t in range(40)]
    growing = [(float(t), 100 + 10 * t) for t in range(40)]
    assert abs(soak_checks.rss_growth(flat)["growth_bytes"]) <= 1
    # medians of t = 10..19 and t = 30..39: 100 + 10 * 15 and 100 + 10 * 35
    assert soak_checks.rss_growth(growing)["growth_bytes"] == 200
    assert soak_checks.rss_growth(flat[:3])["growth_bytes"] is None


def test_rss_tenths_show_whether_growth_levels_off() -> None:
    levelling = [(float(t), 1000 + min(t, 50)) for t in range(100)]
    assert soak_checks.tenth_medians([rss for _, rss in levelling]) == [
        1005, 1015, 1025, 1035, 1045, 1050, 1050, 1050, 1050, 1050
    ]  # fmt: skip
    assert soak_checks.rss_growth(levelling)["tenth_medians_bytes"][-1] == 1050
    assert soak_checks.tenth_medians([7, 9, 8]) == [7, 9, 8]


@pytest.mark.unit
def test_leaks_name_live_processes_and_listening_ports_only() -> None:
    import os
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        found = soak_checks.leaks([os.getpid(), 2**22 + 12345], [port, free_port()])
    assert found == {"processes": [os.getpid()], "ports": [port]}


@pytest.mark.unit
def test_fault_targets_are_ready_replicas_of_the_role_and_the_variant_relaunches_prefill() -> None:
    pools = {
        "prefill": {"role": "prefill", "endpoints": [
            {"id": "p1", "url": "u1", "state": "ready", "labels": {"pid": "11"}},
            {"id": "p2", "url": "u2", "state": "starting", "labels": {"pid": "12"}}]},
        "decode": {"role": "decode", "endpoints": [
            {"id": "d1", "url": "u3", "state": "ready", "labels": {"pid": "13"}}]},
    }  # fmt: skip
    assert soak_faults.ready_targets(pools, "prefill") == [
        soak_faults.Target("prefill", "p1", 11, "u1")
    ]
    profile = {"name": "sim", "routing": {"prefill_threshold": 512},
               "pools": {"prefill": {"role": "prefill", "sim_faults": {"cold_start_s": 2}},
                         "decode": {"role": "decode"}}}  # fmt: skip
    changed = soak_faults.variant(profile, "sim")
    assert changed["routing"]["prefill_threshold"] == 384  # 512 * 3 // 4
    assert changed["pools"]["prefill"]["sim_faults"]["cold_start_s"] == 3.0
    assert changed["pools"]["decode"] == {"role": "decode"}
    assert changed["name"] != "sim" and profile["routing"]["prefill_threshold"] == 512
    assert "sim_faults" not in soak_faults.variant(profile, "vllm")["pools"]["decode"]


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_quick_soak_on_simulated_workers_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = soak.parse_args(["--quick", "--log-dir", str(tmp_path / "logs"), "--out", str(out)])
    result = soak.run_soak(args)
    print(soak.summary(result))
    assert result["violations"] == []
    assert result["lost"] == 0 and result["requests"] == result["ended"] > 20
    assert result["checks"]["metrics"]["match"], result["checks"]["metrics"]
    assert result["checks"]["kv"]["idle"], result["checks"]["kv"]
    assert result["checks"]["leaks"] == {"processes": [], "ports": []}
    assert result["checks"]["teardown_error"] == ""
    routes = result["completed_by_route"]
    assert routes.get("local", 0) > 0 and routes.get("disaggregated", 0) > 0
    injected = Counter(f["action"] for f in result["faults"] if f["result"] == "injected")
    assert injected["sigkill"] >= 1 and injected["sigterm"] >= 1 and injected["switch"] == 1
    assert sum(injected.values()) >= 0.75 * len(result["faults"]) >= 9
    assert result["ok"]
