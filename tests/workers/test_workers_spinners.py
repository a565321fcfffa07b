"""Busy-polling threads (NIXL's progress thread in vLLM) found by behaviour and demoted."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import pytest

from pdserve.workers.launcher import LaunchOptions, WorkerProcess
from pdserve.workers.pinning import DEMOTED_NICE, ThreadSample, sample_threads, spinners
from pdserve.workers.vllm_command import WorkerCommand

TICKS = 100.0  # a one-second window at 100 ticks/s


def _s(ticks: int, voluntary: int = 500) -> ThreadSample:
    return ThreadSample(ticks, voluntary)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("main_ticks", "thread_ticks", "thread_blocked", "expected"),
    [
        (0, 90, 40, [(10, 11)]),  # main idle, a helper at 90% of a core: a spinner
        (5, 50, 40, [(10, 11)]),  # main near idle, helper at exactly the 50% bound
        (60, 90, 40, []),  # main busy (a forward pass): a helper that blocks may be busy too
        (60, 90, 0, [(10, 11)]),  # ...but one that has never blocked in its life polls
        (0, 30, 0, []),  # a thread doing some work, not a core's worth
        (11, 95, 3, []),  # main just above the idle bound, the helper has blocked before
    ],
)
def test_spinners_table(
    main_ticks: int, thread_ticks: int, thread_blocked: int, expected: list
) -> None:
    before = {(10, 10): _s(1000), (10, 11): _s(500, thread_blocked), (10, 12): _s(7)}
    after = {
        (10, 10): _s(1000 + main_ticks),
        (10, 11): _s(500 + thread_ticks, thread_blocked),
        (10, 12): _s(7),
    }
    assert spinners(before, after, TICKS) == expected


@pytest.mark.unit
def test_spinners_ignore_new_threads_main_threads_and_empty_windows() -> None:
    before = {(10, 10): _s(0)}
    after = {(10, 10): _s(0), (10, 11): _s(99, 0)}  # started inside the window: no rate
    assert spinners(before, after, TICKS) == []
    assert spinners({(20, 20): _s(0, 0)}, {(20, 20): _s(100, 0)}, TICKS) == []  # the model
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


@pytest.mark.integration
def test_sample_threads_reads_cpu_time_and_blocking_of_a_real_tree() -> None:
    samples = sample_threads(os.getpid())
    main = samples[(os.getpid(), os.getpid())]
    assert main.ticks > 0
    assert main.voluntary_switches > 0  # pytest has slept and read files by now
