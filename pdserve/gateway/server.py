"""`pdserve gateway`: serve the gateway app with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pdserve.gateway.app import create_app
from pdserve.gateway.auth import is_loopback
from pdserve.gateway.request_log import logging_config
from pdserve.profile import Profile

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30  # in-flight requests finish before the lifespan stops the workers
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; httptools itself sets no limit


class HeadTooLarge(Exception):
    """Raised in a parser callback: uvicorn answers 400 and closes the connection."""


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on every request head.

    uvicorn times out a keep-alive connection only after a response, so a socket that connects
    and sends nothing, or trickles its headers a byte at a time, is held for ever: enough of
    them exhaust the gateway's file descriptors. Here each connection, and each new request
    on it, must finish its head within `timeout_keep_alive` or is closed, and a head larger
    than `MAX_HEAD_BYTES` is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge()

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_late)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_head_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()


def bound_profile(profile: Profile, host: str | None, port: int | None) -> Profile:
    """The profile with the address the gateway really listens on (the admin API's auth
    depends on whether that is loopback)."""
    gateway = profile.gateway.model_copy(
        update={"host": host or profile.gateway.host, "port": port or profile.gateway.port}
    )
    return profile.model_copy(update={"gateway": gateway})


def server_config(
    profile: Profile, host: str | None = None, port: int | None = None, log_level: str = "info"
) -> uvicorn.Config:
    """uvicorn serving the profile's gateway app: the one place `pdserve gateway` and
    `pdserve up` take the server's settings from (host and port default to the profile's)."""
    bound = bound_profile(profile, host, port)
    if not is_loopback(bound.gateway.host) and not os.environ.get("PDSERVE_ADMIN_TOKEN"):
        log.warning(
            "the admin API answers 401 on %s: set PDSERVE_ADMIN_TOKEN to use it",
            bound.gateway.host or "every address",
        )
    return uvicorn.Config(
        create_app(bound),
        host=bound.gateway.host,
        port=bound.gateway.port,
        log_level=log_level,
        log_config=logging_config(bound.gateway.log_format, log_level),
        access_log=False,
        proxy_headers=False,  # no client address is used: skip its per-request rewrite
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        http=HeadDeadlineProtocol,
        timeout_keep_alive=bound.gateway.idle_timeout_s,  # type: ignore[arg-type]
    )


def run_gateway(profile: Profile, host: str | None = None, port: int | None = None) -> int:
    uvicorn.Server(server_config(profile, host, port)).run()
    return 0
