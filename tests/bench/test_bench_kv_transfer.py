"""bench/kv_transfer's P/D pair: its stop takes each worker's whole tree (a vLLM worker's server
runs in a group and helpers of its own), and a worker that dies before /health answers fails
the start at once with the pair stopped."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench import kv_transfer
from pdserve.processes import alive, free_port

pytestmark = pytest.mark.integration  # real processes

# a parent that starts a child in a session of its own, then waits
TREE = "import subprocess, sys, time; subprocess.Popen(['sleep', '60'], start_new_session=True); "
TREE += "print('up', flush=True); time.sleep(60)"


def _tree() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, process_group=0
    )
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    return process


def test_stop_takes_every_worker_tree() -> None:
    processes = [_tree(), _tree()]
    members = [m.pid for p in processes for m in psutil.Process(p.pid).children()]
    assert len(members) == 2
    pair = kv_transfer.Pair(processes, ("http://127.0.0.1:1", "http://127.0.0.1:2"))
    started = time.monotonic()
    pair.stop()
    assert [p.returncode for p in processes] == [-15, -15]  # reaped, stopped by SIGTERM
    assert not any(alive(pid) for pid in members)
    assert time.monotonic() - started < 10  # SIGTERM took them: no grace period waited out


def test_a_worker_that_dies_first_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    died = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(kv_transfer, "worker_argv", lambda role, port, core, model: died)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not start: worker exited with 3"):
        kv_transfer.start_pair(timeout_s=60)
    assert time.monotonic() - started < 30  # not the whole timeout


def test_worker_argv_names_role_port_and_core() -> None:
    port = free_port()
    argv = kv_transfer.worker_argv("decode", port, 1)
    assert argv[1:4] == ["-m", "pdserve.cli", "worker"]
    assert argv[4:] == ["--role", "decode", "--model", "tiny", "--port", str(port), "--cores", "1"]
