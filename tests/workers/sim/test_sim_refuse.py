"""The simulated worker's run-time refusal (pdserve/workers/sim/refuse.py): SIGUSR1 closes its
listening socket, so new connections are refused while the process lives and a stream already
accepted runs to its end; SIGUSR2 listens again on the same port."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from pdserve.workers.sim.launch import SimFleet
from pdserve.workers.sim.refuse import ACCEPT_SIGNAL, REFUSE_SIGNAL

pytestmark = pytest.mark.integration


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def _until(condition, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_refusal_closes_and_reopens_the_port_and_spares_an_accepted_stream() -> None:
    with SimFleet() as fleet:
        url = fleet.start("both", ["--timing", "vllm-cpu-tiny"])
        pid = fleet.processes[url].pid
        body = {"model": "tiny", "prompt": "go", "max_tokens": 400, "stream": True}
        events: list[str] = []
        flowing = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)
                        flowing.set()
            flowing.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert flowing.wait(30)  # the stream is accepted and its tokens flow
        os.kill(pid, REFUSE_SIGNAL)
        assert _until(lambda: _refused(url))
        assert fleet.processes[url].poll() is None  # alive, only refusing
        assert len(events) < 401  # the refusal came while it ran
        reader.join(30)
        assert events[-1] == "data: [DONE]" and len(events) == 401  # 400 tokens and [DONE]
        os.kill(pid, ACCEPT_SIGNAL)
        assert _until(lambda: not _refused(url))
        answer = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=30)
        assert answer.status_code == 200
