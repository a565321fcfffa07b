"""Running a composed worker command: its own process group, signals forwarded to the whole tree,
a bounded wait for `/health`, and on CPU every thread of the tree bound to its cores.

`run_worker` is what `pdserve worker` calls; it returns when the server exits or after a
SIGTERM/SIGINT has stopped the server's whole process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

import httpx

from pdserve.processes import KILL_WAIT_S, alive, astop_tree
from pdserve.workers.pinning import ThreadSample, demote, pin_tree, sample_threads, spinners
from pdserve.workers.vllm_command import WorkerCommand

PIN_INTERVAL_STARTING_S = 0.5
PIN_INTERVAL_READY_S = 2.0


@dataclass(frozen=True)
class LaunchOptions:
    health_url: str
    cores: tuple[int, ...] = ()  # empty: leave placement to the OS (GPU workers)
    ready_timeout_s: float = 600.0
    stop_grace_s: float = 20.0
    pin_self: bool = False  # also bind this process (`pdserve worker` is part of the worker)


class WorkerProcess:
    """One server process tree: start, pin, wait until healthy, stop."""

    def __init__(self, command: WorkerCommand, options: LaunchOptions) -> None:
        self.command = command
        self.options = options
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready_seconds: float | None = None
        self.demoted: set[int] = set()  # busy-polling threads moved to the lowest weight
        self._sample: tuple[float, dict[tuple[int, int], ThreadSample]] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.command.argv,
            env={**os.environ, **self.command.env},
            # Its own process group (one signal reaches the tree) but the caller's session:
            # Linux groups a session's threads for CPU shares (autogroup), so a thread
            # demoted here competes at low weight with everything the caller runs.
            process_group=0,
        )
        self.pin()

    def pin(self) -> int:
        if not self.options.cores or self.process is None:
            return 0
        return pin_tree(self._root(), self.options.cores)

    def _root(self) -> int:
        return os.getpid() if self.options.pin_self else self.pid

    def demote_spinners(self) -> list[int]:
        """Find threads that busy-poll (see pinning.spinners) since the last call and give them
        the lowest weight; the newly demoted thread ids."""
        if not self.options.cores or self.process is None:
            return []
        now, sample = time.monotonic(), sample_threads(self._root())
        previous, self._sample = self._sample, (now, sample)
        if previous is None:
            return []
        window_ns = (now - previous[0]) * 1e9
        found = [tid for _, tid in spinners(previous[1], sample, window_ns)]
        new = [tid for tid in found if tid not in self.demoted and demote(tid)]
        self.demoted.update(new)
        for tid in new:
            print(f"thread {tid} busy-polls: given the lowest weight", flush=True)
        return new

    async def keep_pinned(self) -> None:
        """Re-bind new threads (and those vLLM re-pins) and demote busy-polling ones, until
        cancelled."""
        while True:
            self.pin()
            if self.ready_seconds:
                self.demote_spinners()
            interval = PIN_INTERVAL_READY_S if self.ready_seconds else PIN_INTERVAL_STARTING_S
            await asyncio.sleep(interval)

    async def wait_ready(self) -> float:
        """Seconds from launch to a 200 from /health; raises if it exits or times out first."""
        assert self.process is not None, "not started"
        deadline = self.started_at + self.options.ready_timeout_s
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise RuntimeError(f"worker exited with {self.process.returncode} at start")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.options.health_url)).status_code == 200:
                        self.ready_seconds = time.monotonic() - self.started_at
                        return self.ready_seconds
                await asyncio.sleep(0.5)
        raise TimeoutError(
            f"{self.options.health_url} not healthy in {self.options.ready_timeout_s}s"
        )

    async def stop(self) -> int:
        """SIGTERM the whole tree, SIGKILL what is left after the grace period; the server's
        exit code, or -SIGKILL if it is still there KILL_WAIT_S after the kill."""
        if self.process is None:
            return 0
        code = await astop_tree(self.pid, self.options.stop_grace_s, KILL_WAIT_S)
        if not alive(self.pid):  # gone: asyncio reaps it now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), KILL_WAIT_S)
        if self.process.returncode is not None:
            return self.process.returncode
        print(f"server {self.pid} not reaped {KILL_WAIT_S:g} s after SIGKILL", flush=True)
        return code if code is not None else -int(signal.SIGKILL)


async def run_worker(command: WorkerCommand, options: LaunchOptions) -> int:
    """Start, report `ready in X.Xs`, serve until the server exits or a signal stops it."""
    worker = WorkerProcess(command, options)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await worker.start()
    pinner = asyncio.create_task(worker.keep_pinned())
    try:
        return await _serve(worker, stop_requested)
    finally:
        pinner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinner
        await worker.stop()


async def _serve(worker: WorkerProcess, stop_requested: asyncio.Event) -> int:
    assert worker.process is not None
    ready = asyncio.create_task(worker.wait_ready())
    stopped = asyncio.create_task(stop_requested.wait())
    exited = asyncio.create_task(worker.process.wait())
    try:
        await asyncio.wait({ready, stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            if ready.exception() is not None:
                print(f"error: {ready.exception()}", file=sys.stderr, flush=True)
                return 1
            print(f"ready in {ready.result():.1f}s", flush=True)
            await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done() and not stopped.done():
            return worker.process.returncode or 0
        return 0
    finally:
        await _cancel(ready, stopped, exited)


async def _cancel(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
