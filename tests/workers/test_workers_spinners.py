"""Busy-polling threads (NIXL's progress thread in vLLM) found by behaviour and demoted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pdserve.workers.launcher import LaunchOptions, WorkerProcess
from pdserve.workers.pinning import DEMOTED_NICE, ThreadSample, sample_threads, spinners
from pdserve.workers.vllm_command import WorkerCommand

WINDOW = 100.0  # a window of 100 time units; a thread's demand counts in the same units


def _s(demand: int, voluntary: int = 500) -> ThreadSample:
    return ThreadSample(demand, voluntary)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("main_demand", "thread_demand", "thread_blocked", "expected"),
    [
        (0, 90, 40, [(10, 11)]),  # main idle, a helper wanting a core 90% of the time
        (5, 50, 40, [(10, 11)]),  # main near idle, helper at exactly the 50% bound
        (60, 90, 40, []),  # main busy (a forward pass): a helper that blocks may be busy too
        (60, 90, 0, [(10, 11)]),  # ...but one that has never blocked in its life polls
        (0, 30, 0, []),  # a thread doing some work, not a core's worth
        (11, 95, 3, []),  # main just above the idle bound, the helper has blocked before
    ],
)
def test_spinners_table(
    main_demand: int, thread_demand: int, thread_blocked: int, expected: list
) -> None:
    before = {(10, 10): _s(1000), (10, 11): _s(500, thread_blocked), (10, 12): _s(7)}
    after = {
        (10, 10): _s(1000 + main_demand),
        (10, 11): _s(500 + thread_demand, thread_blocked),
        (10, 12): _s(7),
    }
    assert spinners(before, after, WINDOW) == expected


@pytest.mark.unit
def test_spinners_ignore_new_threads_main_threads_and_empty_windows() -> None:
    before = {(10, 10): _s(0)}
    after = {(10, 10): _s(0), (10, 11): _s(99, 0)}  # started inside the window: no rate
    assert spinners(before, after, WINDOW) == []
    assert spinners({(20, 20): _s(0, 0)}, {(20, 20): _s(100, 0)}, WINDOW) == []  # the model
    idle = {(10, 10): _s(0), (10, 11): _s(0, 0)}
    assert spinners(idle, {(10, 10): _s(0), (10, 11): _s(99, 0)}, 0) == []


SPINNING_SERVER = textwrap.dedent(
    """
    import http.server, sys, threading

    def spin():
        while True:
            pass

    threading.Thread(target=spin, daemon=True).start()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def nice_of(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])  # field 19 of stat


@pytest.mark.integration
async def test_launcher_demotes_a_thread_that_spins_while_the_server_idles() -> None:
    from pdserve.workers.cli import free_port

    port = free_port()
    command = WorkerCommand(argv=[sys.executable, "-c", SPINNING_SERVER, str(port)], env={})
    core = max(os.sched_getaffinity(0))
    options = LaunchOptions(
        health_url=f"http://127.0.0.1:{port}/health", cores=(core,), ready_timeout_s=30
    )
    worker = WorkerProcess(command, options)
    await worker.start()
    try:
        await worker.wait_ready()
        assert worker.demote_spinners() == []  # the first call only takes a sample
        demoted: list[int] = []
        for _ in range(20):  # a 1 s window each; on a loaded machine a window may fall short
            await asyncio.sleep(1.0)
            demoted = worker.demote_spinners()
            if demoted:
                break
        assert len(demoted) == 1, demoted
        assert demoted[0] != worker.pid
        assert nice_of(worker.pid, demoted[0]) == DEMOTED_NICE
        assert nice_of(worker.pid, worker.pid) == 0  # the main thread keeps its weight
        await asyncio.sleep(0.5)
        assert worker.demote_spinners() == []  # reported once
    finally:
        await worker.stop()


SPIN = "import threading\ndef spin():\n    while True:\n        pass\n"
SPINNING_HELPER = SPIN + "threading.Thread(target=spin, daemon=True).start()\n"
SPINNING_HELPER += "import time\ntime.sleep(60)\n"


@pytest.mark.integration
def test_a_spinner_on_a_contended_core_is_still_seen() -> None:
    """Beside two busy processes on its core a spinner runs a third of the time, below the
    bound, but wants the core all the time: it is found by what it wants."""
    core = str(max(os.sched_getaffinity(0)))
    pinned = ["taskset", "-c", core, sys.executable, "-c"]
    hogs = [subprocess.Popen([*pinned, SPIN + "spin()"]) for _ in range(2)]
    helper = subprocess.Popen([*pinned, SPINNING_HELPER])
    try:
        time.sleep(1.0)
        before, start = sample_threads(helper.pid), time.monotonic()
        time.sleep(2.0)
        after, window_ns = sample_threads(helper.pid), (time.monotonic() - start) * 1e9
        assert [pid for pid, _ in spinners(before, after, window_ns)] == [helper.pid]
    finally:
        for process in [*hogs, helper]:
            process.kill()
            process.wait()


@pytest.mark.integration
def test_sample_threads_reads_cpu_time_and_blocking_of_a_real_tree() -> None:
    samples = sample_threads(os.getpid())
    main = samples[(os.getpid(), os.getpid())]
    assert main.demand_ns > 0
    assert main.voluntary_switches > 0  # pytest has slept and read files by now
