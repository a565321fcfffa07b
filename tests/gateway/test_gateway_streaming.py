"""Streams through a real `pdserve up` (uvloop, httptools): the relay's headers and events, and a
client that goes away mid-stream ends the worker's generation rather than leaving it running."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from pdserve.pools.replica import parse_worker_metrics
from pdserve.stack import stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"PDSERVE_ADMIN_TOKEN": "", "PDSERVE_API_KEYS": ""}
    log_dir = tmp_path_factory.mktemp("streaming")
    with stack(PROFILES / "gw-slow-stream.yaml", env=env, log_dir=log_dir) as running:
        yield running.base_url


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
