"""A real `pdserve up` (simulated workers that take 2 s to open their port): each worker's start
is printed as it goes, before the ready banner, and `--log-dir` keeps the workers' logs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pdserve.stack import stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration

COLD_START_S = 2.0  # the profile's sim_faults.cold_start_s


def _start_lines(log: list[str], pool: str) -> dict[str, list[tuple[str, float]]]:
    """(phase, seconds) of the start lines of each of the pool's replicas."""
    found: dict[str, list[tuple[str, float]]] = {}
    for line in log:
        words = line.split()
        if words and words[0].startswith(f"{pool}-") and words[-1] == "s":
            found.setdefault(words[0], []).append((" ".join(words[1:-2]), float(words[-2])))
    return found


def _wait_for_banner(log_path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "pdserve is ready" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)


def test_start_lines_then_banner_and_the_logs_are_kept(tmp_path: Path) -> None:
    env = {"PDSERVE_ADMIN_TOKEN": "start-lines", "PDSERVE_API_KEYS": ""}
    with stack(PROFILES / "gw-cold-start.yaml", env=env, log_dir=tmp_path) as running:
        worker_logs = running.worker_logs
        log_path = running.log_path
        _wait_for_banner(log_path)  # the harness may see the stack ready before `up` prints it
    log = log_path.read_text().splitlines()
    banner = next(i for i, line in enumerate(log) if line.startswith("pdserve is ready"))
    assert f"  worker logs: {worker_logs.resolve()}" in log[:banner]
    for pool in ("prefill", "decode"):
        starts = _start_lines(log[:banner], pool)
        assert len(starts) == 1, log  # one replica each
        [(replica, lines)] = starts.items()
        assert [phase for phase, _ in lines] == ["launching", "ready"], log
        (_, launched), (_, ready) = lines
        assert launched < COLD_START_S <= ready  # seconds since the worker's process started
        # kept after the stack is gone (a simulated worker writes nothing to it)
        assert (worker_logs / f"{replica}.log").is_file()
