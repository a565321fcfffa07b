"""A pytest plugin (tests/conftest.py loads it): an in-process gateway served by uvicorn on
127.0.0.1, for tests that need the gateway on a real socket without a `pdserve up`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager

import pytest
import uvicorn

from pdserve.gateway.app import create_app
from pdserve.profile import Profile

GatewayFactory = Callable[[Profile, Mapping[str, str]], AbstractAsyncContextManager[str]]
START_TIMEOUT_S = 120.0


@contextlib.asynccontextmanager
async def _serve(profile: Profile, env: Mapping[str, str]) -> AsyncIterator[str]:
    app = create_app(profile, env=env)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        if not server.started:
            raise AssertionError("gateway did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        sock.close()


@pytest.fixture
def gateway_server() -> GatewayFactory:
    """`async with gateway_server(profile, env) as base_url:` runs the gateway for the block."""
    return _serve
