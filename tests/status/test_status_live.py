"""`pdserve status` against a real `pdserve up` (gateway + simulated prefill and decode workers)
under load: the figures it reports are the requests that were sent."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pdserve.gateway.metrics import LATENCY_BUCKETS
from pdserve.stack import Stack, stack
from pdserve.status.poll import History, client_for, read_gateway, report_of
from tests.support import PROFILES

pytestmark = pytest.mark.integration

ADMIN = "status-admin"
LONG = "How vexingly quick daft zebras jump! " * 5  # 185 tokens >= threshold 64: disaggregated
SHORT = "Say hello."  # local


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    log_dir = tmp_path_factory.mktemp("status")
    with stack(PROFILES / "gw-disaggregated.yaml", env=env, log_dir=log_dir) as running:
        yield running


def _stream(client: httpx.Client, prompt: str) -> tuple[float, dict[str, int]]:
    """Send a streamed completion; seconds to its first chunk as the client saw it, and the
    usage the stream ends with."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "stream": True, "temperature": 0}
    body["stream_options"] = {"include_usage": True}
    start = time.monotonic()
    first: float | None = None
    usage: dict[str, int] = {}
    with client.stream("POST", "/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            if first is None:
                first = time.monotonic() - start
            usage = json.loads(line[len("data: ") :]).get("usage") or usage
    assert first is not None and usage
    return first, usage


def _status(up: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pdserve.cli", "status", "--url", up.base_url, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**up.env})


def test_a_window_counts_exactly_the_requests_sent_in_it(up: Stack) -> None:
    history = History()
    with (
        client_for(up.base_url, ADMIN) as admin,
        httpx.Client(base_url=up.base_url, timeout=60) as client,
    ):
        history.add(read_gateway(admin).scrape)
        streamed = [_stream(client, LONG) for _ in range(6)]
        usages = [usage for _, usage in streamed]
        for _ in range(4):
            answer = client.post(
                "/v1/completions", json={"model": "tiny", "prompt": SHORT, "max_tokens": 4}
            )
            assert answer.status_code == 200
            usages.append(answer.json()["usage"])
        report = report_of(read_gateway(admin), history, up.base_url)
    ttfts = [ttft for ttft, _ in streamed]
    window = report["window_s"]
    disagg, local = report["routes"]["disaggregated"], report["routes"]["local"]
    assert disagg["requests_per_s"] * window == pytest.approx(6, abs=0.05)
    assert local["requests_per_s"] * window == pytest.approx(4, abs=0.05)
    assert disagg["errors_per_s"] == 0
    # the gateway's TTFT is inside the client's; a quantile interpolates within its bucket, so
    # it is at most the bound of the bucket holding the slowest first token the client saw
    ceiling = min(bound for bound in LATENCY_BUCKETS if bound >= max(ttfts))
    ttft = disagg["ttft_s"]
    assert 0 < ttft["p50"] <= ttft["p99"] <= ceiling
    assert disagg["itl_s"]["p50"] is not None  # streamed: inter-token gaps observed
    for name in ("prefill", "decode"):
        pool = report["pools"][name]
        assert pool["replicas"]["ready"] == 1 and pool["desired"] == 1
        assert pool["reason"].startswith(name)
    # the prefill pool prefilled the 6 long prompts; the decode pool generated every token
    prefilled = sum(usage["prompt_tokens"] for usage in usages[:6])
    generated = sum(usage["completion_tokens"] for usage in usages)
    assert report["pools"]["prefill"]["tokens_per_s"] * window == pytest.approx(prefilled, rel=1e-3)
    assert report["pools"]["decode"]["tokens_per_s"] * window == pytest.approx(generated, rel=1e-3)


def _load(base_url: str, stop: threading.Event, done: list[int]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        turn = 0
        while not stop.is_set():
            _stream(client, LONG if turn % 2 else SHORT)
            done.append(1)
            turn += 1


@pytest.fixture
def load(up: Stack) -> Iterator[list[int]]:
    stop, done = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(up.base_url, stop, done)) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        yield done
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def test_once_json_under_load(up: Stack, load: list[int]) -> None:
    time.sleep(0.5)
    before = len(load)
    result = _status(up, "--once", "--json", "--interval", "2", "--admin-token", ADMIN)
    after = len(load)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["window_s"] == pytest.approx(2, abs=1)
    counted = sum(
        route["requests_per_s"] * report["window_s"] for route in report["routes"].values()
    )
    # every request counted in the window was finished by a load thread (4 may end just after)
    assert 1 <= counted <= after - before + 4
    assert set(report["pools"]) == {"prefill", "decode"}
    for route in ("disaggregated", "local"):
        assert report["routes"][route]["requests_per_s"] > 0
        assert report["routes"][route]["ttft_s"]["p50"] is not None


def test_live_json_refreshes_until_interrupted(up: Stack) -> None:
    command = [sys.executable, "-m", "pdserve.cli", "status", "--url", up.base_url, "--json"]
    command += ["--interval", "0.5", "--admin-token", ADMIN]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    reports = [json.loads(line) for line in lines]
    assert reports[0]["window_s"] == 0  # nothing to compare the first read with
    assert 0 < reports[1]["window_s"] < reports[2]["window_s"]


def test_a_refused_token_is_an_error_not_a_traceback(up: Stack) -> None:
    result = _status(up, "--once", "--interval", "0", "--admin-token", "wrong")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "401" in result.stderr
    assert "Traceback" not in result.stderr


def test_live_tables_redraw_in_a_terminal_until_interrupted(up: Stack) -> None:
    """In a terminal (a pty here) the view takes the screen and redraws each read, like top."""
    command = [sys.executable, "-m", "pdserve.cli", "status", "--url", up.base_url]
    command += ["--interval", "0.3", "--admin-token", ADMIN]
    controller, terminal = pty.openpty()
    env = {**up.env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while screen.count(b"routes") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                screen += os.read(controller, 65536)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
        with contextlib.suppress(OSError):
            while select.select([controller], [], [], 0.5)[0]:
                screen += os.read(controller, 65536)
        os.close(controller)
    text = screen.decode(errors="replace")
    assert text.count("routes") >= 3, text[-2000:]  # drawn, then redrawn
    assert "\x1b[?1049h" in text and "\x1b[?1049l" in text  # the screen taken and given back
    assert code == 0 and "Traceback" not in text
