"""pdserve.processes on real process trees: escalation, sessions of their own, zombies, bounds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pdserve import processes
from pdserve.processes import alive, astop_tree, free_port, process_tree, stop_tree

pytestmark = pytest.mark.integration

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
SHRUG = [  # ignores SIGTERM, says so, then waits
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', "
    "flush=True); time.sleep(600)",
]

# A root that exits on SIGTERM, with a child that ignores it and a grandchild that the child
# starts in a session of its own (as vLLM's helpers may); it writes their pids, then waits.
TREE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    CHILD = '''
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                  start_new_session=True)
    print(grandchild.pid, flush=True)
    time.sleep(600)
    '''
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    with open(sys.argv[1] + ".part", "w") as out:
        json.dump({"child": child.pid, "grandchild": grandchild}, out)
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    time.sleep(600)
    """
)


def start_tree(tmp_path: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    """TREE in a process group of its own (as every worker launcher starts one)."""
    pids_file = tmp_path / "pids.json"
    root = subprocess.Popen([sys.executable, "-c", TREE, str(pids_file)], process_group=0)
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert time.monotonic() < deadline, "the tree did not start in 30 s"
        time.sleep(0.05)
    return root, json.loads(pids_file.read_text())


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    root, pids = start_tree(tmp_path)
    started = time.monotonic()
    code = stop_tree(root.pid, grace_s=1.0, kill_wait_s=5.0)
    elapsed = time.monotonic() - started
    assert code == -signal.SIGTERM  # the root itself went on SIGTERM
    assert root.wait(timeout=1) == -signal.SIGTERM  # and is still ours to reap
    assert not alive(pids["child"])
    assert 1.0 <= elapsed < 6.0  # waited out the grace for the child, then killed it


def test_a_grandchild_in_a_session_of_its_own_is_found_and_stopped(tmp_path: Path) -> None:
    root, pids = start_tree(tmp_path)
    grandchild = psutil.Process(pids["grandchild"])
    assert grandchild.pid in [member.pid for member in process_tree(root.pid)]
    assert os.getsid(grandchild.pid) != os.getsid(root.pid)  # the group signal cannot reach it
    stop_tree(root.pid, grace_s=1.0, kill_wait_s=5.0)
    root.wait(timeout=1)
    assert not alive(grandchild.pid)


def test_a_zombie_counts_as_gone_and_keeps_its_exit_code() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    deadline = time.monotonic() + 30
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not alive(process.pid)
    assert process_tree(process.pid) == []
    assert stop_tree(process.pid, grace_s=20.0) == 3  # read without reaping it
    assert process.wait(timeout=1) == 3  # the Popen still has it


def test_a_root_that_exits_on_sigterm_ends_the_stop_at_once() -> None:
    process = subprocess.Popen(SLEEP)
    started = time.monotonic()
    # unreaped until the Popen waits: a zombie counted as running would wait out the grace
    assert stop_tree(process.pid, grace_s=20.0) == -signal.SIGTERM
    assert time.monotonic() - started < 5.0
    assert process.wait(timeout=1) == -signal.SIGTERM


def test_a_process_in_the_callers_group_is_stopped_alone() -> None:
    """No group signal for a root that does not lead its group: it is the caller's group."""
    target, sibling = subprocess.Popen(SLEEP), subprocess.Popen(SLEEP)
    try:
        stop_tree(target.pid, grace_s=5.0)
        assert target.wait(timeout=1) == -signal.SIGTERM
        assert sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait(timeout=10)


def test_the_stop_is_bounded_when_the_kill_does_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed process on a loaded core may run to its end late (a1254ce): the stop gives
    up after grace + kill wait and says -SIGKILL. Here the kill is simply never sent, and the
    root ignores SIGTERM (a stopped root is no stand-in: Linux ends a stopped process on a
    fatal SIGTERM)."""
    root = subprocess.Popen(SHRUG, stdout=subprocess.PIPE, text=True, process_group=0)
    assert root.stdout is not None and root.stdout.readline().strip() == "ready"
    send = processes._signal

    def term_only(group: int | None, members: list[psutil.Process], signum: signal.Signals) -> None:
        if signum == signal.SIGTERM:
            send(group, members, signal.SIGTERM)

    monkeypatch.setattr(processes, "_signal", term_only)
    started = time.monotonic()
    try:
        assert stop_tree(root.pid, grace_s=0.5, kill_wait_s=1.0) == -signal.SIGKILL
        assert time.monotonic() - started < 0.5 + 1.0 + 0.5
        assert root.poll() is None  # it did outlive every wait
    finally:
        monkeypatch.undo()
        stop_tree(root.pid, grace_s=0.0)
        root.wait(timeout=10)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


async def test_the_async_stop_leaves_the_loop_running(tmp_path: Path) -> None:
    root, pids = start_tree(tmp_path)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        await astop_tree(root.pid, grace_s=1.0, kill_wait_s=5.0)
    finally:
        ticker.cancel()
    assert ticks >= 20  # ~100 in the 1 s grace; a blocking stop lets it run once
    assert root.wait(timeout=1) == -signal.SIGTERM
    assert not alive(pids["child"]) and not alive(pids["grandchild"])
