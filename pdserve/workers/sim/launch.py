"""Starting simulated workers as real processes on 127.0.0.1 (tests, benchmarks, local pools).

with SimFleet() as fleet:
    url = fleet.start(role="decode", flags=["--timing", "l4", "--time-scale", "10"])
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

import httpx

from pdserve.processes import free_port, stop_tree


def sim_argv(role: str, port: int, flags: Sequence[str] = (), host: str = "127.0.0.1") -> list[str]:
    """The command line of one simulated worker."""
    base = [sys.executable, "-m", "pdserve.workers.sim", "--role", role]
    return [*base, "--host", host, "--port", str(port), *flags]


def wait_healthy(
    url: str, timeout_s: float = 30.0, process: subprocess.Popen | None = None
) -> float:
    """Seconds until `url`/health answered 200; raises TimeoutError (or if the process died)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url}/health not ready within {timeout_s} s")


@dataclass
class SimFleet:
    """Simulated worker processes started by this object; `close` stops every one."""

    host: str = "127.0.0.1"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def spawn(
        self, role: str = "both", flags: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> tuple[str, subprocess.Popen]:
        """Start one worker without waiting for it; its base URL and process."""
        port = free_port(self.host)
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            sim_argv(role, port, flags, self.host),
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        self.logs[f"http://{self.host}:{port}"] = log
        url = f"http://{self.host}:{port}"
        self.processes[url] = process
        return url, process

    def start(
        self,
        role: str = "both",
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> str:
        """Start one worker and wait until its /health answers; its base URL."""
        url, process = self.spawn(role, flags, env)
        try:
            wait_healthy(url, timeout_s, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; its stderr: {self.stderr(url)}") from None
        return url

    def stderr(self, url: str) -> str:
        log = self.logs[url]
        log.seek(0)
        return log.read().decode(errors="replace")[-4000:]

    def stop(self, url: str, timeout_s: float = 5.0) -> None:
        process = self.processes.pop(url)
        stop_tree(process.pid, timeout_s)
        process.poll()  # reap it
        self.logs.pop(url).close()

    def close(self) -> None:
        for url in list(self.processes):
            self.stop(url)

    def __enter__(self) -> SimFleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
