"""`pdserve up` as a context manager: the one way tests and bench tools start a whole stack.

    with stack("sim", env={"PDSERVE_ADMIN_TOKEN": "t"}, log_dir=tmp) as running:
        httpx.get(f"{running.base_url}/v1/models")

Start: `python -m pdserve.cli up --profile P --host H --port N [args]` in a process group of its
own (a free port unless one is given, and then it must be free), stdout and stderr to
`<log_dir>/<profile>-<port>.log`, the workers' logs beside it in `<profile>-<port>.workers`
(`pdserve up --log-dir`, unless `env` names a PDSERVE_LOG_DIR). `env` is laid over this
process's environment.

Ready, the one rule (`pdserve.up.stack_ready`, on which `pdserve up` also prints its banner):
GET /ready answers 200 and GET /admin/pools shows every pool with at least the replicas it wants
ready: `replicas.start` at first, then what the autoscaler decides. /ready alone needs only the
decode pool; a stack whose prefill pool is still starting would route a test's first long
prompt differently from its next ones. A pool that starts at zero is not waited for, nor one
the autoscaler takes to zero because it stayed idle while its first replica was starting (with
a short `scale_to_zero_grace_s`, "every pool that starts with replicas serves" may never hold).
If `pdserve up` exits first, or the rule does not hold within `ready_timeout_s`, the stack is
torn down and `StackError` carries the log's tail.

Teardown, the one rule: note every process of the tree and every TCP port they listen on (also
noted once ready, so a worker orphaned by a gateway that died is still known); SIGTERM to
`pdserve up` alone, which drains and stops its workers as on Ctrl-C; after it exits, or after
`stop_grace_s`, every noted process still running is stopped with `pdserve.processes.stop_tree`.
Then no noted process may be alive and no noted port (the gateway's included) may accept a
connection, else `StackError`. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from pdserve import profile as profiles
from pdserve.processes import free_port, process_tree, stop_tree
from pdserve.up import stack_ready
from pdserve.workers.models import serve_model

READY_POLL_S = 0.2
STOP_GRACE_S = 60.0  # `pdserve up` drains (uvicorn's 30 s graceful shutdown), then stops workers
LEFTOVER_GRACE_S = 5.0
LOG_TAIL_LINES = 60

Endpoint = tuple[str, int]


class StackError(RuntimeError):
    """A stack that did not start, or whose teardown left a process or a port behind."""


@dataclass
class Stack:
    """A running `pdserve up`: its URL, its process, its log."""

    profile: profiles.Profile
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    members: dict[int, psutil.Process] = field(default_factory=dict)
    listening: set[Endpoint] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def worker_logs(self) -> Path:
        """Where the workers' logs are (`<replica>.log`)."""
        named = self.env.get("PDSERVE_LOG_DIR")
        return Path(named) if named else self.log_path.with_suffix(".workers")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def admin_headers(self) -> dict[str, str]:
        token = self.env.get("PDSERVE_ADMIN_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def is_ready(self) -> bool:
        """The readiness rule (module docstring), checked once."""
        try:
            with httpx.Client(base_url=self.base_url, timeout=5) as client:
                ready = client.get("/ready")
                pools = client.get("/admin/pools", headers=self.admin_headers())
                return stack_ready(ready.status_code, pools.json())
        except (httpx.HTTPError, ValueError):
            return False

    def survivors(self) -> list[int]:
        """The noted processes still running (a zombie has exited)."""
        return sorted(pid for pid, member in self.members.items() if _running(member))

    def note_tree(self) -> None:
        """Remember the tree's processes and the TCP ports they listen on now."""
        for member in process_tree(self.process.pid):
            self.members.setdefault(member.pid, member)
            self.listening.update(listening_ports(member))


@contextlib.contextmanager
def stack(
    profile: str | Path = "sim",
    *,
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    ready_timeout_s: float = 120.0,
    stop_grace_s: float = STOP_GRACE_S,
    model: str | None = None,
) -> Iterator[Stack]:
    """`pdserve up` for the block, ready by the one rule; torn down by the one rule. `model`:
    `pdserve up --model M` (the profile serving M; `Stack.profile` says so too)."""
    with contextlib.ExitStack() as cleanup:
        if log_dir is None:
            log_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pdserve-")))
        running = start(profile, env or {}, log_dir, host, port, args, model)
        try:
            wait_ready(running, ready_timeout_s)
            running.note_tree()
            yield running
        finally:
            teardown(running, stop_grace_s)


def start(
    profile: str | Path,
    env: Mapping[str, str],
    log_dir: Path,
    host: str,
    port: int | None,
    args: Sequence[str],
    model: str | None = None,
) -> Stack:
    """Launch `pdserve up` (not waiting for it); the port must be free."""
    loaded = profiles.load(str(profile))
    if model is not None:
        loaded = serve_model(loaded, model)
        args = ["--model", model, *args]
    if port is None:
        port = free_port(host)
    elif accepts(host, port):
        raise StackError(f"port {port} on {host} is in use")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{Path(str(profile)).stem}-{port}.log"
    environment = {**os.environ, **env}
    command = [sys.executable, "-m", "pdserve.cli", "up", "--profile", str(profile)]
    command += ["--host", host, "--port", str(port), *args]
    if "PDSERVE_LOG_DIR" not in env:
        command += ["--log-dir", str(log_path.with_suffix(".workers"))]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            process_group=0,
        )
    return Stack(loaded, host, port, process, log_path, environment)


def wait_ready(running: Stack, timeout_s: float) -> None:
    """Until the readiness rule holds; StackError (with the log's tail) if `pdserve up` exits
    first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not running.is_ready():
        code = running.process.poll()
        if code is not None:
            raise StackError(f"pdserve up exited with {code} before ready:\n{running.log_tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"pdserve up not ready within {timeout_s:g} s:\n{running.log_tail()}")
        running.note_tree()
        time.sleep(READY_POLL_S)


def teardown(running: Stack, stop_grace_s: float) -> None:
    """Stop the whole tree; StackError if a process or a listening port outlives it."""
    running.note_tree()
    running.listening.add((running.host, running.port))
    with contextlib.suppress(ProcessLookupError):
        running.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        running.process.wait(stop_grace_s)
    stop_tree(running.process.pid, grace_s=LEFTOVER_GRACE_S)  # a root that ignored SIGTERM
    for member in running.members.values():  # orphans: no longer in the root's tree
        if _running(member):
            stop_tree(member.pid, grace_s=LEFTOVER_GRACE_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        running.process.wait(LEFTOVER_GRACE_S)  # reap it
    survivors = running.survivors()
    bound = sorted(endpoint for endpoint in running.listening if accepts(*endpoint))
    if survivors or bound:
        raise StackError(
            f"pdserve up left processes {survivors} and ports {bound} behind:\n{running.log_tail()}"
        )


def listening_ports(process: psutil.Process) -> set[Endpoint]:
    """(address to connect to, port) of every TCP socket `process` listens on."""
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return set()
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return {
        (loopback.get(c.laddr.ip, c.laddr.ip), c.laddr.port)
        for c in connections
        if c.status == psutil.CONN_LISTEN
    }


def accepts(host: str, port: int) -> bool:
    """Whether something listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
