"""The soak's reference: one `both` worker of the same engine and model, which answers every
request the soak will send before the stack starts (greedy output is a function of the request)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from pdserve.processes import free_port, stop_tree
from pdserve.profile import Profile
from pdserve.workers.sim.launch import SimFleet

VLLM_START_TIMEOUT_S = 300.0


@contextlib.contextmanager
def reference_worker(engine: str, profile: Profile, log_dir: Path) -> Iterator[str]:
    """A running reference worker's base URL for the block."""
    model = profile.model
    flags = ["--served-model-name", model.name, "--max-model-len", str(model.max_model_len)]
    if engine == "sim":
        with SimFleet() as fleet:
            yield fleet.start("both", flags)
        return
    with _vllm_both(profile, flags, log_dir) as url:
        yield url


@contextlib.contextmanager
def _vllm_both(profile: Profile, flags: list[str], log_dir: Path) -> Iterator[str]:
    """`pdserve worker --role both --engine vllm` on core 0, with the profile's model settings
    (one OpenMP thread, as each of `pdserve up`'s CPU workers has: float32 results depend on it)."""
    port = free_port()
    argv = [sys.executable, "-m", "pdserve.cli", "worker", "--role", "both", "--engine", "vllm"]
    argv += ["--model", profile.model.source, "--dtype", profile.model.dtype, *flags]
    argv += ["--kv-cache-gib", str(profile.engine.kv_cache_gib), "--cores", "0"]
    argv += ["--port", str(port), "--side-channel-port", str(free_port())]
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"reference-{port}.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        stop_tree(process.pid, 30.0)
        process.poll()


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + VLLM_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the reference worker exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1.0)
    raise TimeoutError(f"the reference worker at {url} is not healthy within the bound")
