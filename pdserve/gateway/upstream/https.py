"""The path to `https://` workers: httpx, with the certificate and host name checked.

The system's CA bundle (certifi's) by default, the file `SSL_CERT_FILE` names when it is set, or
the `ssl.SSLContext` the gateway is given (a private CA). Environment proxies are not used: the
hop goes straight to the worker, as it does over `http://`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpx

from pdserve.gateway.upstream.base import UpstreamError

IDLE_REUSE_S = 4.0  # as on the http:// path: uvicorn (so vLLM) closes idle connections after 5 s


class HttpsResponse:
    """A worker's response over TLS, headers read; `release()` closes what was not read."""

    def __init__(
        self, response: httpx.Response, deadline: float, closing: set[asyncio.Task[None]]
    ) -> None:
        self._response = response
        self._deadline = deadline  # loop time by which the whole answer must have come
        self._closing = closing
        self._body = response.aiter_bytes()
        self._released = False
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "")

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(self._body)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamError(
                    f"no complete answer from {self._response.url} in time"
                ) from None
            except httpx.HTTPError as exc:
                raise UpstreamError(f"{self._response.url} failed mid-answer: {exc!r}") from None
            yield chunk

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if not self._response.is_closed:  # not read to its end: drop the connection
            task = asyncio.get_running_loop().create_task(self._response.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


class HttpsClient:
    """The `WorkerClient` for `https://` URLs."""

    def __init__(self, tls: ssl.SSLContext | None, max_connections: int) -> None:
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=IDLE_REUSE_S,
        )
        context = tls or httpx.create_ssl_context()  # certifi's CAs, or SSL_CERT_FILE's
        self._client = httpx.AsyncClient(
            verify=context, limits=limits, timeout=None, trust_env=False
        )
        self._closing: set[asyncio.Task[None]] = set()

    async def post(
        self, url: str, payload: bytes, headers: dict[str, str], timeout_s: float
    ) -> HttpsResponse:
        headers = {"content-type": "application/json", **headers}
        request = self._client.build_request("POST", url, content=payload, headers=headers)
        return await self._send(request, timeout_s)

    async def get(self, url: str, timeout_s: float) -> HttpsResponse:
        return await self._send(self._client.build_request("GET", url), timeout_s)

    async def _send(self, request: httpx.Request, timeout_s: float) -> HttpsResponse:
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamError(f"no answer from {request.url} within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach {request.url}: {exc}") from None
        return HttpsResponse(response, deadline, self._closing)

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._client.aclose()
