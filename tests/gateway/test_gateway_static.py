"""`pdserve gateway` (the gateway alone) over static endpoints: a simulated worker started by
hand, named in the profile's `actuator.static.endpoints`, served through the openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from pdserve.actuators.local import free_port

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0


def _wait_healthy(url: str, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}{path} not ready in {START_TIMEOUT_S} s")


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PDSERVE_API_KEYS": "", "PDSERVE_ADMIN_TOKEN": ""}
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        process_group=0,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture()
def static_gateway(tmp_path: Path) -> Iterator[str]:
    worker_port, gateway_port = free_port(), free_port()
    cli = [sys.executable, "-m", "pdserve.cli"]
    worker = _start(
        [
            *cli,
            "worker",
            "--engine",
            "sim",
            "--role",
            "both",
            "--port",
            str(worker_port),
            "--served-model-name",
            "tiny",
        ]
    )
    gateway = None
    try:
        _wait_healthy(f"http://127.0.0.1:{worker_port}", "/health")
        profile = {
            "model": {"name": "tiny"},
            "engine": {"kind": "sim"},
            "routing": {"mode": "standard"},
            "pools": {"decode": {"role": "both"}},
            "actuator": {
                "kind": "static",
                "static": {"endpoints": {"decode": [f"http://127.0.0.1:{worker_port}"]}},
            },
        }
        path = tmp_path / "static.yaml"
        path.write_text(yaml.safe_dump(profile))
        gateway = _start([*cli, "gateway", "--profile", str(path), "--port", str(gateway_port)])
        url = f"http://127.0.0.1:{gateway_port}"
        _wait_healthy(url, "/ready")
        yield url
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(worker)


def test_gateway_alone_serves_static_endpoints(static_gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{static_gateway}/v1", api_key="x", max_retries=0)
    raw = client.completions.with_raw_response.create(model="tiny", prompt="hello", max_tokens=4)
    assert raw.headers["x-pdserve-profile"] == "static"
    assert raw.headers["x-pdserve-route"] == "local"
    assert raw.parse().usage.completion_tokens == 4  # type: ignore[union-attr]
    pools = httpx.get(f"{static_gateway}/admin/pools", timeout=10).json()
    assert pools["decode"]["replicas"]["ready"] == 1
