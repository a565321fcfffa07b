"""`pdserve gateway` (the gateway alone) over static endpoints: a simulated worker started by
hand, named in the profile's `actuator.static.endpoints`, served through the openai client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from pdserve.processes import free_port, stop_tree
from pdserve.workers.sim.launch import wait_healthy

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0


@contextlib.contextmanager
def _running(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """`command` in a process group of its own (no API keys), its whole tree stopped after."""
    env = {**os.environ, "PDSERVE_API_KEYS": "", "PDSERVE_ADMIN_TOKEN": ""}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, process_group=0
    )
    try:
        yield process
    finally:
        stop_tree(process.pid, grace_s=STOP_GRACE_S)
        process.wait(10)  # reap it


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Until the gateway's GET /ready answers 200 (its pool has a ready replica)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ready not ready in {START_TIMEOUT_S} s")


def _profile(worker_url: str) -> dict[str, object]:
    return {
        "model": {"name": "tiny"},
        "engine": {"kind": "sim"},
        "routing": {"mode": "standard"},
        "pools": {"decode": {"role": "both"}},
        "actuator": {"kind": "static", "static": {"endpoints": {"decode": [worker_url]}}},
    }


@pytest.fixture()
def static_gateway(tmp_path: Path) -> Iterator[str]:
    worker_port, gateway_port = free_port(), free_port()
    worker_url, url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    cli = [sys.executable, "-m", "pdserve.cli"]
    worker_args = ["--engine", "sim", "--role", "both", "--served-model-name", "tiny"]
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump(_profile(worker_url)))
    with contextlib.ExitStack() as processes:  # closed in reverse: the gateway, then the worker
        worker = processes.enter_context(
            _running([*cli, "worker", *worker_args, "--port", str(worker_port)])
        )
        wait_healthy(worker_url, START_TIMEOUT_S, worker)
        gateway = processes.enter_context(
            _running([*cli, "gateway", "--profile", str(path), "--port", str(gateway_port)])
        )
        _wait_ready(url, gateway)
        yield url


def test_gateway_alone_serves_static_endpoints(static_gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{static_gateway}/v1", api_key="x", max_retries=0)
    raw = client.completions.with_raw_response.create(model="tiny", prompt="hello", max_tokens=4)
    assert raw.headers["x-pdserve-profile"] == "static"
    assert raw.headers["x-pdserve-route"] == "local"
    assert raw.parse().usage.completion_tokens == 4  # type: ignore[union-attr]
    pools = httpx.get(f"{static_gateway}/admin/pools", timeout=10).json()
    assert pools["decode"]["replicas"]["ready"] == 1
