"""`pdserve gateway` with the Ray actuator stops gracefully on SIGTERM: the request in flight
completes, the app shuts down, every Ray-launched worker stops. (ray.init installs a SIGTERM
handler that exits at once; the actuator keeps the server's own handler in charge.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pdserve.processes import free_port

pytestmark = pytest.mark.integration

PROFILE = """
description: ray shutdown test
engine: {kind: sim, sim_timing: vllm-cpu-tiny}
routing: {mode: standard}
pools:
  decode: {role: both, replicas: {min: 1, max: 1}}
actuator: {kind: ray, ray: {num_cpus_per_replica: 0.5}}
"""


async def test_sigterm_drains_and_stops_ray_workers(tmp_path: Path) -> None:
    profile = tmp_path / "ray-shutdown.yaml"
    profile.write_text(PROFILE)
    port, log = free_port(), tmp_path / "gateway.log"
    argv = [sys.executable, "-m", "pdserve.cli", "gateway", "--profile", str(profile)]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            "--port",
            str(port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{base}/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"gateway not ready:\n{log.read_text()[-3000:]}")
            workers = [
                e["url"]
                for e in (await client.get(f"{base}/admin/pools")).json()["decode"]["endpoints"]
            ]
            assert len(workers) == 1
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 300}
            in_flight = asyncio.create_task(client.post(f"{base}/v1/completions", json=body))
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            process.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status_code == 200
            assert response.json()["usage"]["completion_tokens"] == 300
            # uvicorn re-raises the signal once its graceful shutdown is complete
            code = await asyncio.wait_for(process.wait(), 60)
            assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]
            assert "Application shutdown complete" in log.read_text()
            with pytest.raises(httpx.TransportError):
                await client.get(f"{workers[0]}/health", timeout=2)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 10)
