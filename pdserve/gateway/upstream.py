"""The gateway's one pooled HTTP client to its workers, for the request path.

aiohttp rather than httpx here: httpcore's pool re-scans every connection for every other one
on each request (quadratic in pooled connections), which at a few dozen concurrent streams
cost the gateway more CPU than proxying itself. Health and metrics probes, a few a second,
stay on httpx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

MAX_CONNECTIONS = 4096


class UpstreamError(Exception):
    """The worker could not be reached, or the connection failed mid-response."""


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class Upstream:
    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, json_serialize=json.dumps
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
    ) -> aiohttp.ClientResponse:
        """POST `body`; the response with its headers read (release it when done)."""
        assert self._session is not None, "Upstream.start() first"
        try:
            return await self._session.post(
                url,
                data=json.dumps(body).encode(),
                headers={**headers, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            )
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None

    async def post_json(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        response = await self.open(url, body, headers, timeout_s)
        try:
            return response.status, await response.read()
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
        finally:
            response.release()


async def chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response body as it arrives; `UpstreamError` if the connection breaks."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TRANSPORT_ERRORS as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
