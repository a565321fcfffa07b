"""Pure ASGI middleware: the request body's size and read-time limits (413 and 408 in OpenAI's
shape), so neither a huge body nor a client trickling one byte at a time holds the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve.gateway.errors import error_body


class BodyRefused(Exception):
    """The body broke a limit and the error response went out; the app's work is moot."""


class _BodyGuard:
    """One request's receive and send, counting body bytes against the size limit and
    reading them against the deadline; once refused, the app's own response is dropped."""

    def __init__(self, receive: Receive, send: Send, limits: BodySizeLimit) -> None:
        self._receive, self._send, self._limits = receive, send, limits
        self._deadline = asyncio.get_running_loop().time() + limits.body_timeout_s
        self._received = 0
        self._body_done = self._started = self._refused = False

    async def receive(self) -> Message:
        if self._body_done:  # later receives wait for a disconnect: no deadline on those
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            await self._refuse(408, self._limits.slow_message(), "body_timeout")
            raise BodyRefused() from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._body_done = not message.get("more_body", False)
            if self._received > self._limits.max_bytes:
                await self._refuse(413, self._limits.large_message(), "body_too_large")
                raise BodyRefused()
        return message

    async def send(self, message: Message) -> None:
        if self._refused:
            return  # the limit's error went out; drop whatever the app attempts
        self._started = self._started or message["type"] == "http.response.start"
        await self._send(message)

    async def _refuse(self, status: int, message: str, code: str) -> None:
        if not self._started and not self._refused:
            await send_error(self._send, status, message, code)
        self._refused = True


class BodySizeLimit:
    """Refuse bodies over `max_bytes` (by Content-Length, or while they stream in) with 413,
    and bodies not all received `body_timeout_s` after the request's headers with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    def large_message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    def slow_message(self) -> str:
        return f"request body not received within {self.body_timeout_s:g} s"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            # the server frames the body by Content-Length: no more than that can arrive
            await send_error(send, 413, self.large_message(), "body_too_large")
            return
        guard = _BodyGuard(receive, send, self)
        with contextlib.suppress(BodyRefused):
            await self.app(scope, guard.receive, guard.send)


async def send_error(send: Send, status: int, message: str, code: str) -> None:
    """An OpenAI-shaped error that closes the connection (the rest of the body is unread)."""
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
