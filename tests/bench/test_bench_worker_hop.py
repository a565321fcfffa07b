"""bench/worker_hop against a real simulated worker: every client's CPU per request, whole and
streamed, is measured over requests that all succeeded (a failed one raises)."""

from __future__ import annotations

import pytest
import uvloop

from bench import worker_hop
from pdserve.workers.sim.launch import SimFleet

pytestmark = pytest.mark.integration


def test_measure_times_each_client_whole_and_streamed() -> None:
    with SimFleet() as fleet:
        url = fleet.start("both", ["--time-scale", "1000"], timeout_s=60)
        results = uvloop.run(worker_hop.measure(url, n=40, concurrency=2))
    assert list(results) == ["pdserve http11", "httpx", "aiohttp"]
    for whole, streamed in results.values():
        assert 0 < whole < 100 and 0 < streamed < 100  # ms of CPU per request
