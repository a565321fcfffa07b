"""Gateway test helpers: an in-process gateway app whose workers are real local processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

import httpx
from fastapi import FastAPI

from pdserve import profile as profiles
from pdserve.gateway.app import create_app
from pdserve.gateway.tracing import Tracing
from tests.support import PROFILES

READY_TIMEOUT_S = 120.0


def gateway_profile(name: str) -> profiles.Profile:
    return profiles.load(str(PROFILES / f"{name}.yaml"))


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if (await client.get("/ready")).status_code == 200:
                return
            await asyncio.sleep(0.1)


async def until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
    """Wait until `condition()` holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(poll_s)


@contextlib.asynccontextmanager
async def running_app(
    name: str,
    env: Mapping[str, str] | None = None,
    tracing: Tracing | None = None,
    autoscale: bool = False,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The gateway app for tests/support/profiles/NAME.yaml, lifespan run, workers ready."""
    app = create_app(gateway_profile(name), env=env or {}, autoscale=autoscale, tracing=tracing)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", timeout=60
        ) as client:
            await wait_ready(client)
            manager = app.state.gateway.manager
            wanted = [n for n, spec in manager.profile.pools.items() if spec.replicas.start > 0]
            await until(lambda: all(manager.ready_count(n) > 0 for n in wanted), READY_TIMEOUT_S)
            yield app, client
