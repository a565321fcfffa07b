"""The gateway's client to its workers, for the request path and the health and metrics probes.

Chosen per URL behind one small protocol (`base.WorkerClient`): `http://` workers (every local,
Ray and Kubernetes one) take a keep-alive HTTP/1.1 client of pdserve's own (`http11`), and
`https://` ones (static endpoints behind TLS) take httpx with certificate checks (`https`).

Why the `http://` hop keeps its own client rather than a library's: every completion takes it
(a disaggregated one twice), so its CPU is the gateway's CPU. Measured on this project's 2-core
machine (shared, load average 6-10 while these ran), uvloop, the simulated worker at model time
/1000, two runs each:
- the client alone, `python -m bench.worker_hop --requests 3000 --concurrency 8` (this process's
  CPU per request): pdserve http11 0.06-0.09 ms, aiohttp 0.15-0.17 ms, httpx 0.75-1.2 ms; a
  streamed 16-token request 0.20-0.33, 0.33-0.43 and 1.06-1.14 ms.
- the whole gateway, `python -m bench.gateway_overhead --requests 200 --stream-requests 50
  --duration 5 --idle 10` (gateway CPU per request, 32 closed-loop clients), once as shipped and
  once with every URL sent through `https.HttpsClient` (httpx): 0.52-0.66 ms against
  3.05-3.15 ms, 146-218 against 71-94 requests/s. When e12325e replaced aiohttp, the gateway's
  CPU per request went from about 0.9 to 0.55 ms (0.12 -> 0.04 ms of client CPU).
TLS workers are the exception (static endpoints outside the cluster): there certificate and
host name checks matter more than a millisecond, and httpx does them.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

from pdserve.gateway.upstream.base import UpstreamError, UpstreamResponse, WorkerClient, read_all
from pdserve.gateway.upstream.http11 import MAX_CONNECTIONS, KeepAliveClient
from pdserve.gateway.upstream.https import HttpsClient

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse", "WorkerClient", "chunks"]


class Upstream:
    """Every worker URL's client: `http://` on the keep-alive client, `https://` on httpx
    (made on the first such URL; certificates checked against `tls`, by default the system's
    CAs or `SSL_CERT_FILE`'s)."""

    def __init__(
        self,
        max_connections: int = MAX_CONNECTIONS,
        tls: ssl.SSLContext | None = None,
        api_key: str | None = None,
    ) -> None:
        self._max_connections = max_connections
        # The workers' API key (vLLM --api-key / VLLM_API_KEY): sent on every request.
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._plain = KeepAliveClient(max_connections)
        self._tls = tls
        self._https: HttpsClient | None = None

    def client(self, url: str) -> WorkerClient:
        if url.startswith("http://"):
            return self._plain
        if url.startswith("https://"):
            if self._https is None:
                self._https = HttpsClient(self._tls, self._max_connections)
            return self._https
        raise UpstreamError(f"{url}: a worker URL must start with http:// or https://")

    async def start(self) -> None:
        """Nothing to set up: connections open on first use."""

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._plain.close()
        if self._https is not None:
            await self._https.close()

    async def open(
        self, url: str, body: dict[str, Any] | bytes, headers: dict[str, str], timeout_s: float
    ) -> UpstreamResponse:
        """POST JSON `body`; the response with its headers read (release it when done)."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client(url).post(url, payload, {**headers, **self._auth}, timeout_s)

    async def post_json(
        self, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        return await read_all(await self.open(url, body, headers, timeout_s))

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        """GET `url` (a probe): its status and body."""
        return await read_all(await self.client(url).get(url, timeout_s))


async def chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
    """The response body as it arrives; `UpstreamError` if the connection breaks."""
    async for chunk in response.chunks():
        yield chunk
