"""The fast path to `http://` workers: a small keep-alive HTTP/1.1 client on asyncio's `Protocol`
and httptools (the parser uvicorn serves with). Connections per worker, reused last-in first-out,
one request at a time on each; the health and metrics probes share them. Why it exists rather
than httpx or aiohttp: pdserve/gateway/upstream/__init__.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

from pdserve.gateway.upstream.base import UpstreamError

MAX_CONNECTIONS = 4096
IDLE_REUSE_S = 4.0
"""Idle connections older than this are not reused: uvicorn (so vLLM) closes them after 5 s."""
PAUSE_BYTES = 256 * 1024
"""Read no further from a worker while this much of its answer waits for a slow client."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.error: UpstreamError | None = None  # set once the connection is unusable
        self.timed_out = False
        self.idle_since = 0.0
        self.paused = False
        self.headers_read: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.content_type = ""
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.received = False  # any byte of the response
        self.complete = False
        self.keep_alive = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(UpstreamError(f"the worker closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"malformed response from the worker: {exc}"))
            self.close()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.headers_read is not None and not self.headers_read.done():
            self.headers_read.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_BYTES and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # --- the client's side -----------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        for future in (self.headers_read, self.waiter):
            if future is not None and not future.done():
                future.set_exception(self.error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.fail(UpstreamError("connection closed"))

    def usable(self, now: float) -> bool:
        fresh = now - self.idle_since < IDLE_REUSE_S
        closing = self.transport is None or self.transport.is_closing()
        return self.error is None and not closing and fresh

    async def send(self, request: bytes) -> None:
        """Write one request and wait for its response's status and headers."""
        assert self.transport is not None
        self._begin()
        self.headers_read = self.loop.create_future()
        self.transport.write(request)
        await self.headers_read

    async def next_data(self) -> bytes | None:
        """All of the body that has arrived and not been taken, waiting for some if none has;
        None once it is complete. Pieces that came together leave together (one relay write
        for a burst of tokens, not one each)."""
        while not self.body:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


class PooledResponse:
    """A worker's response on a pooled connection, headers read; `release()` puts the connection
    back (or closes it if the answer was not read to its end)."""

    def __init__(
        self,
        upstream: KeepAliveClient,
        key: tuple[str, int],
        conn: _Connection,
        timer: asyncio.Handle,
    ) -> None:
        self._upstream = upstream
        self._key = key
        self._conn = conn
        self._timer = timer
        self._released = False
        self.status = conn.status
        self.content_type = conn.content_type

    async def read(self) -> bytes:
        parts = []
        while (data := await self._conn.next_data()) is not None:
            parts.append(data)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (data := await self._conn.next_data()) is not None:
            yield data

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._timer.cancel()
        self._upstream._put_back(self._key, self._conn)


class KeepAliveClient:
    """The `WorkerClient` for `http://` URLs."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._slots = asyncio.Semaphore(max_connections)  # connections in use
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes]] = {}  # url -> (address, head)

    async def close(self) -> None:
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    async def post(
        self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
    ) -> PooledResponse:
        key, start = self._target(url)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        length = f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode("latin-1")
        return await self._request(key, start + length + payload, timeout_s)

    async def get(self, url: str, timeout_s: float) -> PooledResponse:
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode("latin-1")
        return await self._request(key, request, timeout_s)

    async def _request(
        self, key: tuple[str, int], request: bytes, timeout_s: float
    ) -> PooledResponse:
        await self._slots.acquire()
        try:
            return await self._exchange(key, request, timeout_s)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self, key: tuple[str, int], request: bytes, timeout_s: float
    ) -> PooledResponse:
        conn = self._reuse(key, asyncio.get_running_loop().time())
        if conn is not None:
            try:
                return await self._send_on(key, conn, request, timeout_s)
            except UpstreamError:
                if conn.received or conn.timed_out:
                    raise
                # the worker closed it while idle: once more, on a new connection
        conn = await self._connect(key, timeout_s)
        return await self._send_on(key, conn, request, timeout_s)

    async def _send_on(
        self, key: tuple[str, int], conn: _Connection, request: bytes, timeout_s: float
    ) -> PooledResponse:
        timer = conn.loop.call_later(timeout_s, _time_out, conn, timeout_s)
        try:
            await conn.send(request)
        except BaseException:
            timer.cancel()
            conn.close()
            raise
        return PooledResponse(self, key, conn, timer)

    def _target(self, url: str) -> tuple[tuple[str, int], bytes]:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            start = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            start += "Content-Type: application/json\r\n"
            if len(self._targets) > 4096:
                self._targets.clear()  # replicas come and go: keep the cache bounded
            target = self._targets[url] = ((host, port), start.encode("latin-1"))
        return target

    def _reuse(self, key: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int], timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(loop), *key)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc!r}") from None
        return conn

    def _put_back(self, key: tuple[str, int], conn: _Connection) -> None:
        self._slots.release()
        if conn.complete and conn.keep_alive and conn.error is None:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()


def _time_out(conn: _Connection, timeout_s: float) -> None:
    conn.timed_out = True
    conn.fail(UpstreamError(f"no complete answer within {timeout_s:g} s"))
    conn.close()
