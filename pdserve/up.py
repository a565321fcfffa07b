"""`pdserve up`: the gateway and every pool's workers of a profile on this machine.

Workers are `pdserve worker` processes started by the local actuator from the gateway's lifespan.
On Ctrl-C or SIGTERM uvicorn shuts the app down, and the lifespan stops every worker's process
group, so nothing is left running and no port stays bound.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from types import FrameType

import httpx
import uvicorn

from pdserve.gateway.app import create_app
from pdserve.profile import ActuatorKind, Profile

READY_POLL_S = 0.5


class StoppableServer(uvicorn.Server):
    """uvicorn's server, except that after a graceful stop on SIGINT/SIGTERM it returns instead
    of re-raising the signal, so `pdserve up` exits with its own status once workers stopped."""

    stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.stop_signal = sig
        self._captured_signals.clear()


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


def every_pool_up(ready_body: object, profile: Profile) -> bool:
    """True once each pool that starts with replicas has one serving, per the body of /ready.
    /ready itself only needs the decode pool (the gateway can serve then); `pdserve up` waits
    for the whole profile, so a long prompt right after the banner takes the route it names."""
    counts = ready_body.get("pools", {}) if isinstance(ready_body, dict) else {}
    starting = [name for name, pool in profile.pools.items() if pool.replicas.start > 0]
    return all(counts.get(name, 0) > 0 for name in starting)


async def announce_when_ready(server: uvicorn.Server, base_url: str, profile: Profile) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while not server.should_exit:
            try:
                response = await client.get(f"{base_url}/ready")
                if response.status_code == 200 and every_pool_up(response.json(), profile):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(READY_POLL_S)
        else:
            return
    print(f"pdserve is ready: profile {profile.name} at {base_url}", flush=True)
    print(f"  OpenAI base URL: {base_url}/v1", flush=True)
    print(f"  try: {curl_example(base_url, profile)}", flush=True)


async def serve(profile: Profile, host: str, port: int) -> int:
    app = create_app(profile)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # no client address is used: skip its per-request rewrite
        timeout_graceful_shutdown=30,
    )
    server = StoppableServer(config)
    base_url = f"http://{host}:{port}"
    print(f"starting profile {profile.name}: pools {', '.join(profile.pools)}", flush=True)
    announcer = asyncio.create_task(announce_when_ready(server, base_url, profile))
    try:
        await server.serve()
    finally:
        announcer.cancel()
    return 130 if server.stop_signal == signal.SIGINT else 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (uvicorn[standard] brings it), as `uvicorn.run` would use."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_up(profile: Profile, host: str | None = None, port: int | None = None) -> int:
    profile = local_profile(profile)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            status = runner.run(
                serve(profile, host or profile.gateway.host, port or profile.gateway.port)
            )
    except KeyboardInterrupt:
        return 130
    print("pdserve stopped: every worker is down", file=sys.stderr, flush=True)
    return status
