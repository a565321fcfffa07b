"""The KV transfer and prefix-cache counters the gateway re-exports per pool, read off real vLLM
CPU workers after one disaggregated request: the decode worker's NIXL histograms count the
pull, with its bytes, and the prefill worker's prefix cache counts the prompt's tokens."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from pdserve.disagg import decode_request
from pdserve.pools.worker_counters import WorkerCounters, parse_worker_counters

pytestmark = pytest.mark.vllm


def _counters(url: str) -> WorkerCounters:
    return parse_worker_counters(httpx.get(f"{url}/metrics", timeout=10).text)


def test_one_pull_is_one_transfer_with_its_bytes(cluster: Any, pd: SimpleNamespace) -> None:
    workers = cluster.require("prefill", "decode")
    prefill, decode = workers["prefill"].url, workers["decode"].url
    body = pd.body_for("completion", 600, stream=False)
    before = {"prefill": _counters(prefill), "decode": _counters(decode)}
    pd.call(decode, decode_request(body, pd.prefill(prefill, body)))
    after = {"prefill": _counters(prefill), "decode": _counters(decode)}
    pulled = after["decode"].minus(before["decode"])
    assert pulled.xfer_seconds.count == 1 and pulled.xfer_bytes.count == 1
    assert pulled.xfer_bytes.total > 0 and pulled.xfer_seconds.total > 0
    assert pulled.xfer_seconds.buckets[float("inf")] == 1
    assert pulled.failed_transfers == 0
    queried = after["prefill"].minus(before["prefill"])
    assert queried.prefix_queries >= 600 and queried.prefix_hits == 0  # a prompt never seen
