"""run_worker as `pdserve worker` runs it: `ready in X.Xs`, then SIGTERM/SIGINT stop the tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pdserve.processes import alive
from pdserve.workers.cli import free_port
from pdserve.workers.pinning import tree_pids

pytestmark = pytest.mark.integration

# The server forks a grandchild into a new session, as vLLM's helpers may: still stopped.
SERVER = textwrap.dedent(
    """
    import http.server, os, subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                     start_new_session=True)
    time.sleep(0.5)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)

RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from pdserve.workers.launcher import LaunchOptions, run_worker
    from pdserve.workers.vllm_command import WorkerCommand
    port, core = sys.argv[1], int(sys.argv[2])
    command = WorkerCommand(argv=[sys.executable, "-c", sys.argv[3], port], env={"X_ENV": "1"})
    options = LaunchOptions(health_url=f"http://127.0.0.1:{port}/health", cores=(core,),
                            ready_timeout_s=30, stop_grace_s=5, pin_self=True)
    sys.exit(asyncio.run(run_worker(command, options)))
    """
)


def killed(pid: int) -> bool:
    """SIGKILL is pending for the process: it dies the next time it runs."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except FileNotFoundError:
        return True
    pending = int(fields.get("ShdPnd", "0"), 16) | int(fields.get("SigPnd", "0"), 16)
    return bool(pending & (1 << (signal.SIGKILL - 1)))


def _running_on(core: int) -> str:
    """Runnable threads bound to `core`, for a failure message."""
    listing = subprocess.run(
        ["ps", "-eLo", "pid,tid,ppid,sid,psr,ni,pcpu,stat,comm"], capture_output=True, text=True
    ).stdout.splitlines()
    return "\n".join(listing[:1] + [line for line in listing[1:] if " R" in line])


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return f"{fields[:120]} | {cmdline.read()[:200]!r}"
    except FileNotFoundError:
        return "gone"


def wait_for_line(log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if "ready in" in text:
            return text
        time.sleep(0.1)
    raise TimeoutError(f"no ready line in {timeout_s}s: {log.read_text()!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_whole_tree(signum: int, tmp_path: Path) -> None:
    core = max(os.sched_getaffinity(0))
    log = tmp_path / "runner.log"
    with log.open("w") as out:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(free_port()), str(core), SERVER], stdout=out
        )
    try:
        line = wait_for_line(log, timeout_s=60)
        assert float(line.split("ready in ")[1].split("s")[0]) < 30
        time.sleep(0.5)
        tree = tree_pids(runner.pid)
        assert len(tree) >= 4  # runner, server, its two children (one outside the group)
        for pid in tree:
            assert os.sched_getaffinity(pid) == {core}
        runner.send_signal(signum)
        assert runner.wait(timeout=30) == 0
        # Every member is dead, or killed and not yet run to its end: a SIGKILLed process on
        # a busy core can wait its turn to exit after the launcher's bounded wait.
        survivors = {pid: _describe(pid) for pid in tree if alive(pid) and not killed(pid)}
        assert survivors == {}, _running_on(core)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)
