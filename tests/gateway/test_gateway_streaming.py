"""Streams through a real `pdserve up` (uvloop, httptools): the relay's headers and events, and a
client that goes away mid-stream ends the worker's generation rather than leaving it running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from pdserve.actuators.local import free_port
from pdserve.pools.replica import parse_worker_metrics
from tests.gateway.conftest import PROFILES, stop_process

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 120.0


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "pdserve.cli", "up", "--port", str(port), "--profile"]
    command.append(str(PROFILES / "gw-slow-stream.yaml"))
    env = {**os.environ, "PDSERVE_ADMIN_TOKEN": "", "PDSERVE_API_KEYS": ""}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ready(base_url), READY_TIMEOUT_S, "the gateway is ready")
        yield base_url
    finally:
        stop_process(process)


def _decode_endpoint(base_url: str) -> dict[str, object]:
    endpoint: dict[str, object] = httpx.get(f"{base_url}/admin/pools", timeout=5).json()["decode"][
        "endpoints"
    ][0]
    return endpoint


def _worker_running(worker_url: str) -> float:
    text = httpx.get(f"{worker_url}/metrics", timeout=5).text
    return parse_worker_metrics(text).get("running", 0.0)


def test_a_stream_is_relayed_event_by_event_with_the_gateway_headers(gateway: str) -> None:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 5, "stream": True}
    headers = {"X-Request-Id": "relay-1"}
    with httpx.stream(
        "POST", f"{gateway}/v1/completions", json=body, headers=headers, timeout=30
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-pdserve-route"] == "local"
    assert response.headers["x-pdserve-profile"] == "gw-slow-stream"
    assert response.headers["x-request-id"] == "relay-1"
    assert len(events) == 6 and events[-1] == "data: [DONE]"  # 5 tokens, then [DONE]


def test_a_client_leaving_mid_stream_ends_the_generation_on_the_worker(gateway: str) -> None:
    worker_url = str(_decode_endpoint(gateway)["url"])
    # ~10 ms a token at this profile's pace: 1,000 tokens would run for about 10 s
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", f"{gateway}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: dropping the iterator would close the stream
        next(chunks)
        assert _decode_endpoint(gateway)["inflight"] == 1
        assert _worker_running(worker_url) == 1
    # leaving the block mid-body closes the connection
    _wait(lambda: _decode_endpoint(gateway)["inflight"] == 0, 3, "the gateway releases the replica")
    _wait(lambda: _worker_running(worker_url) == 0, 3, "the worker stops generating")
