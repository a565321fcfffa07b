"""`pdserve up` on a signal: uvicorn stops gracefully and raises the signal again under the
handlers `stop_signals_noted` put there, which note it, so `pdserve up` exits with its own status
(130 on Ctrl-C, 0 on SIGTERM) once every worker is down, without uvicorn's private state."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from pdserve.processes import free_port
from pdserve.stack import stack
from pdserve.up import stop_signals_noted

OPEN = {"PDSERVE_ADMIN_TOKEN": "", "PDSERVE_API_KEYS": ""}


def _app_that_starts(started: asyncio.Event) -> Callable[..., Awaitable[None]]:
    """An ASGI app with only a lifespan, which sets `started` once uvicorn started it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan", "no request is sent"
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
            started.set()
        await send({"type": "lifespan.shutdown.complete"})

    return app


async def _serve_until(sig: int) -> tuple[list[int], uvicorn.Server]:
    started = asyncio.Event()
    app = _app_that_starts(started)
    server = uvicorn.Server(uvicorn.Config(app, port=free_port("127.0.0.1"), log_level="warning"))
    with stop_signals_noted(server) as noted:
        serving = asyncio.create_task(server.serve())
        await asyncio.wait_for(started.wait(), 10)
        signal.raise_signal(sig)
        await asyncio.wait_for(serving, 10)
    return noted, server


@pytest.mark.unit
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_uvicorn_and_is_noted_not_raised(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    noted, server = asyncio.run(_serve_until(sig))
    # uvicorn took it (graceful stop), then raised it again: noted once, this process lives on
    assert noted == [sig] and server.should_exit
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.unit
def test_a_signal_before_uvicorn_serves_asks_it_to_stop() -> None:
    server = uvicorn.Server(uvicorn.Config(_app_that_starts(asyncio.Event())))
    with stop_signals_noted(server) as noted:
        signal.raise_signal(signal.SIGTERM)
    assert noted == [signal.SIGTERM] and server.should_exit


@pytest.mark.integration
def test_ctrl_c_stops_every_worker_and_exits_130(tmp_path: Path) -> None:
    with stack("sim", env=OPEN, log_dir=tmp_path) as running:
        assert len(running.members) >= 3  # pdserve up and its two workers
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(60) == 130
        assert running.survivors() == []
    assert "pdserve stopped: every worker is down" in running.log_path.read_text()
