"""Pinning helpers (pure) and the launcher on a real process tree (no vLLM)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time

import pytest

from pdserve.processes import alive, free_port, stop_tree
from pdserve.workers.launcher import LaunchOptions, WorkerProcess
from pdserve.workers.pinning import (
    format_cpu_list,
    parse_cpu_list,
    pin_tree,
    tree_affinity,
    tree_pids,
)
from pdserve.workers.vllm_command import WorkerCommand


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "cores"),
    [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0,2-3,7", {0, 2, 3, 7}), ("5\n", {5}), ("", set())],
)
def test_cpu_list_round_trip(text: str, cores: set[int]) -> None:
    assert parse_cpu_list(text) == cores
    assert parse_cpu_list(format_cpu_list(cores)) == cores


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cores", "text"), [({0, 1, 2, 5}, "0-2,5"), ({3}, "3"), ({1, 3}, "1,3"), (set(), "")]
)
def test_format_cpu_list(cores: set[int], text: str) -> None:
    assert format_cpu_list(cores) == text


# A server with a child process and extra threads: the shape of vLLM's tree, minus vLLM.
SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys, threading, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    for _ in range(3):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    time.sleep(float(sys.argv[2]))  # a slow start

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


@pytest.mark.integration
async def test_launcher_pins_every_thread_waits_for_health_and_stops_the_tree() -> None:
    core = max(os.sched_getaffinity(0))
    port = free_port()
    command = WorkerCommand(argv=[sys.executable, "-c", SERVER, str(port), "1.0"], env={})
    worker = WorkerProcess(
        command,
        LaunchOptions(health_url=f"http://127.0.0.1:{port}/health", cores=(core,),
                      ready_timeout_s=30, stop_grace_s=5),
    )  # fmt: skip
    await worker.start()
    try:
        seconds = await worker.wait_ready()
        assert 1.0 <= seconds < 30
        tree = tree_pids(worker.pid)
        assert len(tree) == 2  # the server and its child
        worker.pin()  # threads started since launch
        affinity = tree_affinity(worker.pid)
        assert len(affinity) >= 5  # 4 threads in the server, 1 in the child
        assert set(map(frozenset, affinity.values())) == {frozenset({core})}
    finally:
        await worker.stop()
    await asyncio.sleep(0.2)
    assert all(not alive(pid) for pid in tree)


@pytest.mark.integration
async def test_launcher_reports_a_server_that_exits_at_start() -> None:
    command = WorkerCommand(argv=[sys.executable, "-c", "raise SystemExit(3)"], env={})
    worker = WorkerProcess(command, LaunchOptions(health_url="http://127.0.0.1:9/health"))
    await worker.start()
    with pytest.raises(RuntimeError, match="exited with 3"):
        await worker.wait_ready()
    assert await worker.stop() == 3


@pytest.mark.integration
async def test_launcher_wait_is_bounded() -> None:
    port = free_port()
    command = WorkerCommand(argv=[sys.executable, "-c", SERVER, str(port), "60"], env={})
    options = LaunchOptions(
        health_url=f"http://127.0.0.1:{port}/health", ready_timeout_s=1.5, stop_grace_s=2
    )
    worker = WorkerProcess(command, options)
    await worker.start()
    try:
        with pytest.raises(TimeoutError):
            await worker.wait_ready()
    finally:
        await worker.stop()


@pytest.mark.integration
def test_pin_tree_moves_only_threads_that_are_off_their_cores() -> None:
    import subprocess

    cores = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        assert pin_tree(proc.pid, [cores[0]]) >= 1
        assert pin_tree(proc.pid, [cores[0]]) == 0  # already there
        assert set(map(frozenset, tree_affinity(proc.pid).values())) == {frozenset({cores[0]})}
    finally:
        stop_tree(proc.pid, grace_s=5)
        proc.wait(timeout=10)  # reap it
    assert tree_pids(proc.pid) == []
