"""Process supervision for everything pdserve starts: free ports, process trees, stopping a
tree (SIGTERM, a grace period, SIGKILL, a bounded wait), on psutil.

A stop finds the tree before it signals: once a parent exits, its children are re-parented and
no longer look like ours. It signals the root's process group (when the root leads one) and
every member by pid, so a grandchild in a session of its own is reached too. A zombie counts
as gone: it has exited and only waits for its parent (or, for an orphan, PID 1, which may
never come) to read its status. That is also why the waits poll `alive` rather than use
`psutil.wait_procs`: it counts a zombie that is not our child as running, and it reaps a
zombie that is, taking the exit status from the `Popen` or asyncio process that owns it. The
root's exit code is read without reaping it (`waitid` with `WNOWAIT`). Every wait is bounded.

`stop_tree` blocks; `astop_tree` is the same stop for an event loop (it sleeps with
`asyncio.sleep`, so the loop keeps serving while a tree winds down).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import psutil

KILL_WAIT_S = 10.0
"""After SIGKILL: the longest a stop waits for the tree to be gone (a loaded core runs a
killed process late; a stop must still end)."""
POLL_S = 0.05

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant alive now, parents first; empty if `pid` is gone."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [member for member in members if _running(member)]


def alive(pid: int) -> bool:
    """Running or stopped: not gone, and not a zombie."""
    try:
        return _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def stop_tree(pid: int, grace_s: float, kill_wait_s: float = KILL_WAIT_S) -> int | None:
    """SIGTERM the tree of `pid`, SIGKILL what is left after `grace_s`, wait at most
    `kill_wait_s` more. The root's exit code (negative: the signal that ended it) where it is
    our child and not yet reaped, -SIGKILL if it outlived the kill wait, else None."""
    stop = _TreeStop(pid, grace_s, kill_wait_s)
    for pause in stop.pauses():
        time.sleep(pause)
    return stop.code


async def astop_tree(pid: int, grace_s: float, kill_wait_s: float = KILL_WAIT_S) -> int | None:
    """`stop_tree` for an event loop: the same stop, waiting with asyncio.sleep."""
    stop = _TreeStop(pid, grace_s, kill_wait_s)
    for pause in stop.pauses():
        await asyncio.sleep(pause)
    return stop.code


@dataclass
class _TreeStop:
    pid: int
    grace_s: float
    kill_wait_s: float
    code: int | None = None  # once `pauses` is exhausted

    def pauses(self) -> Iterator[float]:
        """The stop as steps: each item is a pause for the caller to sleep before the next
        look, so that the same stop serves a thread and an event loop."""
        members = process_tree(self.pid)
        group = _group_led_by(self.pid)
        _signal(group, members, signal.SIGTERM)
        members = yield from _until_gone(members, self.grace_s)
        if members:
            members = _with_descendants(members)  # anything they started meanwhile
            _signal(group, members, signal.SIGKILL)
            members = yield from _until_gone(members, self.kill_wait_s)
        _signal(group, [], signal.SIGKILL)  # anything left in the group that the walk missed
        if any(member.pid == self.pid for member in members):
            self.code = -int(signal.SIGKILL)
        else:
            self.code = _exit_code(self.pid)


def _until_gone(
    members: list[psutil.Process], timeout_s: float
) -> Generator[float, None, list[psutil.Process]]:
    deadline = time.monotonic() + timeout_s
    while True:
        members = [member for member in members if _running(member)]
        left = deadline - time.monotonic()
        if not members or left <= 0:
            return members
        yield min(POLL_S, left)


def _running(process: psutil.Process) -> bool:
    """Still the process we found (not a recycled pid), and not exited."""
    try:
        return process.is_running() and process.status() not in _GONE
    except psutil.NoSuchProcess:
        return False


def _with_descendants(members: list[psutil.Process]) -> list[psutil.Process]:
    found = {member.pid: member for member in members}
    for member in members:
        with contextlib.suppress(psutil.Error):
            found.update((child.pid, child) for child in member.children(recursive=True))
    return list(found.values())


def _group_led_by(pid: int) -> int | None:
    """`pid` if it leads a process group (a worker started with one of its own), or may have
    (it is reaped: its group outlives it while it has members, and the kernel does not hand
    the id to another process meanwhile); None for a process in its caller's group, which a
    group signal would take down with it."""
    try:
        return pid if os.getpgid(pid) == pid else None
    except ProcessLookupError:
        return pid


def _signal(group: int | None, members: list[psutil.Process], signum: signal.Signals) -> None:
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
    for member in members:  # psutil checks the pid still names the process found
        with contextlib.suppress(psutil.Error):
            member.send_signal(signum)


def _exit_code(pid: int) -> int | None:
    """The exit code of our child `pid` if it has exited, leaving it to its owner to reap."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None  # not our child, or already reaped by its owner
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
