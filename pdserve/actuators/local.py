"""Replicas as `pdserve worker` processes on this machine (the actuator of `pdserve up`).

Each replica gets a free HTTP port, its own NIXL side-channel port and, on CPU, a core from its
pool's `cores` (the least used one). It runs in a process group of its own, so stopping it
(SIGTERM, then SIGKILL after a bound) takes the whole group: no orphans, no leftover ports. It
stays in this session: Linux shares CPU between sessions first (autogroup), then among a
session's threads by weight, so a worker's demoted NIXL polling thread yields to everything
`pdserve up` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pdserve.actuators.base import LaunchingActuator, ReplicaHandle
from pdserve.pools.workerspec import SPEC_LABEL, worker_spec_key
from pdserve.processes import KILL_WAIT_S, alive, astop_tree, free_port
from pdserve.profile import Profile

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 45.0
"""A worker forwards SIGTERM to its server and waits up to ~30 s for it before giving up."""


@dataclass
class LocalReplica:
    handle: ReplicaHandle
    process: asyncio.subprocess.Process
    core: int | None

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def started_at(self) -> float:
        return self.handle.started_at


def worker_command(
    profile_path: Path, pool: str, port: int, side_channel_port: int, core: int | None
) -> list[str]:
    command = [sys.executable, "-m", "pdserve.cli", "worker", "--profile", str(profile_path)]
    command += ["--pool", pool, "--port", str(port), "--side-channel-port", str(side_channel_port)]
    if core is not None:
        command += ["--cores", str(core)]
    return command


class LocalActuator(LaunchingActuator[LocalReplica]):
    def __init__(
        self,
        profile: Callable[[], Profile],
        host: str = "127.0.0.1",
        stop_timeout_s: float = STOP_TIMEOUT_S,
        log_dir: Path | None = None,
    ) -> None:
        super().__init__(profile)
        self._host = host
        self._stop_timeout_s = stop_timeout_s
        self._workdir = tempfile.TemporaryDirectory(prefix="pdserve-local-")
        self._log_dir = log_dir or Path(self._workdir.name)  # kept after close when given
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count(1)

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        return [self._handle(r) for r in self._replicas.get(pool, {}).values()]

    @staticmethod
    def _handle(replica: LocalReplica) -> ReplicaHandle:
        # asyncio sets returncode only once its child watcher reaps the process: a killed
        # worker reads alive for that while, its probe fails, and a request in that gap found
        # the pool neither ready nor replaceable (503). A zombie counts as gone.
        running = replica.process.returncode is None and alive(replica.process.pid)
        if running == replica.handle.alive:
            return replica.handle
        h = replica.handle
        return ReplicaHandle(h.id, h.pool, h.url, running, h.started_at, h.labels)

    async def close(self) -> None:
        await self.stop_all()
        self._workdir.cleanup()

    def pids(self) -> list[int]:
        return [r.process.pid for m in self._replicas.values() for r in m.values()]

    def pid(self, replica_id: str) -> int | None:
        """The process id of a replica (its process group id too)."""
        for members in self._replicas.values():
            if replica_id in members:
                return members[replica_id].process.pid
        return None

    def _profile_file(self, profile: Profile) -> Path:
        text = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
        digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        path = Path(self._workdir.name) / f"{profile.name}-{digest}.yaml"
        if not path.exists():
            path.write_text(text)
        return path

    def _pick_core(self, profile: Profile, pool: str) -> int | None:
        """The pool's core with the fewest live replicas on it, counting every pool's (another
        pool, or an older generation of this one, may hold a core too); ties: list order."""
        cores = profile.pools[pool].cores
        if not cores:
            return None
        used = Counter(
            r.core
            for members in self._replicas.values()
            for r in members.values()
            if r.process.returncode is None
        )
        return min(cores, key=lambda c: (used[c], cores.index(c)))

    async def _launch(self, pool: str) -> LocalReplica:
        profile = self._profile()
        core = self._pick_core(profile, pool)
        port = free_port(self._host)
        replica_id = f"{pool}-{next(self._ids)}"
        command = worker_command(
            self._profile_file(profile), pool, port, free_port(self._host), core
        )
        log_file = (self._log_dir / f"{replica_id}.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=own_group_dying_with_parent,  # uvloop takes no process_group
            )
        finally:
            log_file.close()
        labels = {
            SPEC_LABEL: worker_spec_key(profile, pool),
            "log": str(log_file.name),
            "pid": str(process.pid),
        }
        handle = ReplicaHandle(
            replica_id, pool, f"http://{self._host}:{port}", True, time.monotonic(), labels
        )
        return LocalReplica(handle, process, core)

    async def _stop(self, replica: LocalReplica) -> None:
        """Stop the worker's tree: its group and every descendant (a worker's server has a
        group of its own and may start helpers in sessions of their own)."""
        await astop_tree(replica.process.pid, self._stop_timeout_s)
        with contextlib.suppress(TimeoutError):  # gone now: asyncio reaps it
            await asyncio.wait_for(replica.process.wait(), KILL_WAIT_S)


def own_group_dying_with_parent() -> None:
    """In the child before exec: a process group of its own (stopping it reaches the group),
    and SIGTERM if the gateway dies without stopping it (Linux), so even a SIGKILLed gateway
    leaves no worker behind."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
