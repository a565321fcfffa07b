"""Binding every thread of a worker's process tree (psutil finds the tree) to its cores, and
finding its busy-polling threads, from /proc/<pid>/task.

vLLM's CPU path pins only its OpenMP threads; NixlConnector re-pins the model thread to the
last core of the NUMA node and the API-server and engine-core processes float. So the
launcher binds each thread (`/proc/<pid>/task/<tid>`) itself, and again as new threads appear.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pdserve.processes import process_tree

PROC = Path("/proc")


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's list format, as in Cpus_allowed_list)."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def format_cpu_list(cores: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5'."""
    ordered = sorted(set(cores))
    runs: list[str] = []
    start = previous = None
    for core in [*ordered, None]:
        if previous is not None and core == previous + 1:
            previous = core
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = core
    return ",".join(runs)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the process or thread exited while we looked


def tree_pids(root: int) -> list[int]:
    """`root` and every descendant process alive now, parents first."""
    return [process.pid for process in process_tree(root)]


def threads_of(pid: int) -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir(PROC / str(pid) / "task"))
    except (FileNotFoundError, ProcessLookupError):
        return []


def tree_affinity(root: int) -> dict[tuple[int, int], set[int]]:
    """(pid, tid) -> the cores each thread of the tree may run on, from Cpus_allowed_list."""
    affinity = {}
    for pid in tree_pids(root):
        for tid in threads_of(pid):
            status = _read(PROC / str(pid) / "task" / str(tid) / "status")
            if status is None:
                continue
            for line in status.splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    affinity[(pid, tid)] = parse_cpu_list(line.split(":", 1)[1])
    return affinity


def pin_tree(root: int, cores: Iterable[int]) -> int:
    """Bind every thread of `root`'s process tree to `cores`; returns how many were moved."""
    wanted = set(cores)
    moved = 0
    for pid in tree_pids(root):
        for tid in threads_of(pid):
            try:
                if os.sched_getaffinity(tid) != wanted:
                    os.sched_setaffinity(tid, wanted)
                    moved += 1
            except OSError:
                continue  # exited between listing and binding
    return moved


# NIXL's agent runs a progress thread that polls without sleeping (vLLM's NixlConnector creates
# the agent with its progress thread on and no delay). On a dedicated CPU core it takes about
# half the core from the model thread, which doubles a prefill step. Such a thread is found by
# what it does: it keeps wanting a core and has never blocked, or it wants one while its
# process's main thread, which runs the model, is idle. "Wanting" is time running plus time
# waiting for a CPU (/proc/.../schedstat), so a spinner is seen as such on a contended core too.
SPINNER_MIN_SHARE = 0.5  # of the sampling window, running or runnable
IDLE_MAIN_MAX_SHARE = 0.1
DEMOTED_NICE = 19  # the lowest CFS weight: it still progresses transfers, it no longer competes


@dataclass(frozen=True)
class ThreadSample:
    demand_ns: int  # time running plus time runnable but waiting for a CPU, so far
    voluntary_switches: int  # times it blocked (slept, waited) so far


def sample_threads(root: int) -> dict[tuple[int, int], ThreadSample]:
    """(pid, tid) -> CPU demand and blocking count so far, for every thread of root's tree."""
    samples = {}
    for pid in tree_pids(root):
        for tid in threads_of(pid):
            task = PROC / str(pid) / "task" / str(tid)
            demand, status = _demand_ns(task), _read(task / "status")
            if demand is None or status is None:
                continue
            samples[(pid, tid)] = ThreadSample(
                demand, _status_int(status, "voluntary_ctxt_switches")
            )
    return samples


def _demand_ns(task: Path) -> int | None:
    """Running + run-queue time from schedstat; CPU time from stat where schedstat is absent."""
    schedstat = _read(task / "schedstat")
    if schedstat:
        run_ns, wait_ns = schedstat.split()[:2]
        return int(run_ns) + int(wait_ns)
    stat = _read(task / "stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _status_int(status: str, key: str) -> int:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split(":", 1)[1])
    return 0


def spinners(
    before: dict[tuple[int, int], ThreadSample],
    after: dict[tuple[int, int], ThreadSample],
    window_ns: float,
) -> list[tuple[int, int]]:
    """Non-main threads that wanted a CPU for >= SPINNER_MIN_SHARE of the window between two
    samples and either never blocked in their life or did so while their process's main thread
    was idle."""
    if window_ns <= 0:
        return []

    def share(key: tuple[int, int]) -> float:
        return (after[key].demand_ns - before[key].demand_ns) / window_ns

    found = []
    for (pid, tid), now in after.items():
        if tid == pid or (pid, tid) not in before or (pid, pid) not in before:
            continue
        if share((pid, tid)) < SPINNER_MIN_SHARE:
            continue
        if now.voluntary_switches == 0 or share((pid, pid)) <= IDLE_MAIN_MAX_SHARE:
            found.append((pid, tid))
    return sorted(found)


def demote(tid: int) -> bool:
    """Lowest scheduling weight for one thread; False if it is gone or may not be changed."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, DEMOTED_NICE)
    except OSError:
        return False
    return True
