"""`pdserve up`: the gateway and every pool's workers of a profile on this machine.

Workers are `pdserve worker` processes started by the local actuator from the gateway's lifespan.
On Ctrl-C or SIGTERM uvicorn shuts the app down, and the lifespan stops every worker's process
group, so nothing is left running and no port stays bound.

uvicorn handles SIGINT/SIGTERM while it serves and, once it has stopped, raises the signal again
under the handlers it found. `pdserve up` puts its own there first (`stop_signals_noted`): they
note the signal, so the process exits with its own status after the workers are down instead of
dying of the signal, and a signal outside uvicorn's window still asks the server to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import uvicorn

from pdserve.gateway.auth import is_loopback
from pdserve.gateway.server import server_config
from pdserve.profile import ActuatorKind, Profile
from pdserve.up_progress import Seen, Start, advance

READY_POLL_S = 0.5
LOG_DIR_ENV = "PDSERVE_LOG_DIR"


@contextlib.contextmanager
def stop_signals_noted(server: uvicorn.Server) -> Iterator[list[int]]:
    """For the block, SIGINT and SIGTERM are noted in the list it yields and ask `server` to
    stop; the handlers found before are put back after it."""
    noted: list[int] = []

    def note(sig: int, frame: FrameType | None) -> None:
        noted.append(sig)
        server.should_exit = True

    found = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)


def local_profile(profile: Profile) -> Profile:
    """The profile with the local actuator, whatever it named (up runs everything here)."""
    if profile.actuator.kind is ActuatorKind.local:
        return profile
    actuator = profile.actuator.model_copy(update={"kind": ActuatorKind.local})
    return profile.model_copy(update={"actuator": actuator})


def curl_example(base_url: str, profile: Profile) -> str:
    body = {
        "model": profile.model.name,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    return (
        f"curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )


def stack_ready(ready_status: int, pools: object) -> bool:
    """The one readiness rule of a whole stack, the banner's and `pdserve.stack`'s: GET /ready
    is 200 (the decode pool serves) and, in the body of GET /admin/pools, every pool of the
    profile has at least the replicas it wants ready, so a long prompt right after the banner
    takes the route it names. A pool wants `replicas.start` at first, then what the autoscaler
    decides: a pool that starts at zero is not waited for, nor one the autoscaler took to zero
    because it stayed idle while its first replica was still starting."""
    if ready_status != 200 or not isinstance(pools, dict) or not pools:
        return False
    wanted = [pool for pool in pools.values() if isinstance(pool, dict) and "desired" in pool]
    if len(wanted) != len(pools):
        return False
    return all(
        pool["replicas"]["ready"] >= pool["desired"] for pool in wanted if pool["in_profile"]
    )


class StartWatch:
    """Each worker's start as `pdserve up` prints it: the replicas of GET /admin/pools, the
    lines their logs (the local actuator's `log` label) gained since the last poll, and when
    their process (its `pid` label) was created."""

    def __init__(self) -> None:
        self.starts: dict[str, Start] = {}
        self._offsets: dict[str, int] = {}

    def lines(self, pools: dict[str, Any], now: float) -> list[str]:
        seen = [
            self._seen(name, endpoint, now)
            for name, pool in pools.items()
            if pool.get("in_profile", True)
            for endpoint in pool.get("endpoints", [])
        ]
        self.starts, lines = advance(self.starts, seen, now)
        return lines

    def _seen(self, pool: str, endpoint: dict[str, Any], now: float) -> Seen:
        labels = endpoint.get("labels", {})
        replica = str(endpoint["id"])
        log = labels.get("log")
        new = self._new_lines(replica, Path(log)) if log else ()
        return Seen(replica, pool, endpoint["state"], new, _created(labels.get("pid"), now))

    def _new_lines(self, replica: str, log: Path) -> tuple[str, ...]:
        """The whole lines `log` gained since the last read."""
        offset = self._offsets.get(replica, 0)
        try:
            with log.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except OSError:
            return ()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._offsets[replica] = offset + len(whole)
        return tuple(whole.decode("utf-8", "replace").splitlines())


def _created(pid: str | None, default: float) -> float:
    """When the process was created (wall clock), or `default`."""
    try:
        return psutil.Process(int(pid)).create_time() if pid else default
    except (psutil.Error, ValueError):
        return default


async def print_starts(watch: StartWatch, pools: Any) -> None:
    """The start lines of this poll; the logs are read in a thread, off the gateway's loop. A
    body of another shape prints nothing (the banner's rule still reads it)."""
    try:
        lines = await asyncio.to_thread(watch.lines, pools, time.time())
    except (KeyError, TypeError, AttributeError):
        return
    for line in lines:
        print(line, flush=True)


async def announce_when_ready(
    server: uvicorn.Server, base_url: str, profile: Profile, admin_token: str | None
) -> None:
    """Print each worker's start as it goes, then the banner once the stack is ready."""
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    watch = StartWatch()
    async with httpx.AsyncClient(base_url=base_url, timeout=5, headers=headers) as client:
        while not server.should_exit:
            try:
                ready, pools = await client.get("/ready"), await client.get("/admin/pools")
                body = pools.json()
                if pools.status_code == 200:
                    await print_starts(watch, body)
                if stack_ready(ready.status_code, body):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(READY_POLL_S)
        else:
            return
    print(f"pdserve is ready: profile {profile.name} at {base_url}", flush=True)
    print(f"  OpenAI base URL: {base_url}/v1", flush=True)
    print(f"  try: {curl_example(base_url, profile)}", flush=True)


def admin_token(host: str, env: dict[str, str]) -> tuple[str | None, bool]:
    """(the admin token, whether it was made now). Bound beyond loopback the admin API needs a
    token (`gateway.auth`): `pdserve up` makes one for the run when none is set, so the stack
    it starts can be read and switched, and says so, rather than serving a closed admin API."""
    token = env.get("PDSERVE_ADMIN_TOKEN") or None
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24), True
    return token, False


async def serve(profile: Profile, host: str, port: int) -> int:
    token, generated = admin_token(host, dict(os.environ))
    if generated and token is not None:
        os.environ["PDSERVE_ADMIN_TOKEN"] = token  # read by the app it creates next
    server = uvicorn.Server(server_config(profile, host, port, log_level="warning"))
    base_url = f"http://{host}:{port}"
    print(f"starting profile {profile.name}: pools {', '.join(profile.pools)}", flush=True)
    if os.environ.get(LOG_DIR_ENV):
        print(f"  worker logs: {os.environ[LOG_DIR_ENV]}", flush=True)
    if generated:
        print(
            f"  admin token for this run (set PDSERVE_ADMIN_TOKEN to choose one): {token}",
            flush=True,
        )
    announcer = asyncio.create_task(announce_when_ready(server, base_url, profile, token))
    try:
        with stop_signals_noted(server) as noted:
            await server.serve()
    finally:
        announcer.cancel()
    return 130 if signal.SIGINT in noted else 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (uvicorn[standard] brings it), as `uvicorn.run` would use."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_up(
    profile: Profile,
    host: str | None = None,
    port: int | None = None,
    log_dir: str | Path | None = None,
) -> int:
    """The whole stack until Ctrl-C or SIGTERM. `log_dir`: keep each worker's log there as
    `<replica>.log` (the local actuator's PDSERVE_LOG_DIR; default: a temporary directory
    removed at exit)."""
    profile = local_profile(profile)
    if log_dir is not None:
        os.environ[LOG_DIR_ENV] = str(Path(log_dir).resolve())  # read by the gateway's app
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            status = runner.run(
                serve(profile, host or profile.gateway.host, port or profile.gateway.port)
            )
    except KeyboardInterrupt:
        return 130
    print("pdserve stopped: every worker is down", file=sys.stderr, flush=True)
    return status
