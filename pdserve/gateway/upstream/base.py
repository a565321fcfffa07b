"""What the gateway needs of an HTTP client to its workers, whichever one serves a URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class UpstreamError(ConnectionError):
    """The worker could not be reached, timed out, or the connection failed mid-response."""


class UpstreamResponse(Protocol):
    """A worker's response, headers read; `release()` it when done (idempotent)."""

    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None: ...


class WorkerClient(Protocol):
    """One way to reach workers: the keep-alive HTTP/1.1 client for `http://`, httpx for
    `https://`. `timeout_s` bounds the whole exchange, from sending to the body's last byte."""

    async def post(
        self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
    ) -> UpstreamResponse:
        """POST a JSON `payload`; the response with its headers read."""
        ...

    async def get(self, url: str, timeout_s: float) -> UpstreamResponse: ...

    async def close(self) -> None: ...


async def read_all(response: UpstreamResponse) -> tuple[int, bytes]:
    try:
        return response.status, await response.read()
    finally:
        response.release()
