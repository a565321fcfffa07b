"""Forwarding one completion to the workers: the optional prefill hop, then decode, with failover.

Before the first byte from a decode worker the request may move to another replica (bounded by
`gateway.retries`); after it, a failing worker ends the stream with an SSE error event. A prefill
hop that fails falls back to local prefill on the decode pool.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from pdserve import disagg
from pdserve.gateway.errors import OpenAIError, sse_error_event
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.streaming import RelayResponse
from pdserve.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, chunks
from pdserve.policies.types import Route
from pdserve.pools.manager import NoReplica, Overloaded, PoolDropped, PoolManager
from pdserve.pools.replica import Replica
from pdserve.profile import Profile

log = logging.getLogger(__name__)

SWITCHES_FOLLOWED = 3  # profile switches a waiting request follows before it gives up (503)


class RetryableFailure(Exception):
    """The worker failed before sending anything: another replica may take the request."""


@dataclass
class Exchange:
    """One client request on its way through the gateway."""

    path: str  # /v1/completions or /v1/chat/completions
    body: dict[str, Any]  # the client's body, kv_transfer_params stripped
    request_id: str
    profile: Profile  # the profile active when it arrived: it finishes under it
    route: Route
    prompt_tokens: int
    priority: int = 0
    affinity_key: str | None = None
    block_hashes: list[int] = field(default_factory=list)  # the prompt's KV blocks
    arrived: float = field(default_factory=time.monotonic)
    local_sent: float | None = None  # sent to a decode replica to prefill there, no token yet

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def headers(self) -> dict[str, str]:
        return {
            "x-pdserve-route": self.route,
            "x-pdserve-profile": self.profile.name,
            "x-request-id": self.request_id,
        }


class Forwarder:
    def __init__(
        self,
        manager: PoolManager,
        upstream: Upstream,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock

    async def acquire(self, ex: Exchange, pool: str, exclude: set[str]) -> Replica:
        try:
            return await self.manager.acquire(
                pool,
                priority=ex.priority,
                prompt_tokens=ex.prompt_tokens,
                affinity_key=ex.affinity_key,
                exclude=exclude,
            )
        except Overloaded as exc:
            raise OpenAIError(429, str(exc), "pool_overloaded", retry_after_s=1) from None
        except PoolDropped:
            raise  # the caller re-plans under the active profile
        except NoReplica as exc:
            raise OpenAIError(503, str(exc), "no_replica", retry_after_s=5) from None

    async def prefill(self, ex: Exchange) -> dict[str, Any] | None:
        """The prefill hop; the prefill response, or None to prefill locally instead."""
        pool = ex.profile.prefill_pool
        assert pool is not None
        try:
            replica = await self.acquire(ex, pool, set())
        except PoolDropped:  # a switch dropped the prefill pool while the request was held
            ex.profile = self.manager.profile
            return None
        started = self.clock()
        try:
            status, content = await self.upstream.post_json(
                f"{replica.url}{ex.path}",
                disagg.prefill_request(ex.body),
                {"X-Request-Id": ex.request_id},
                ex.profile.gateway.request_timeout_s,
            )
            if status != 200:
                raise RetryableFailure(f"prefill worker answered {status}")
            answer: dict[str, Any] = json.loads(content)
        except (UpstreamError, ValueError, RetryableFailure) as exc:
            log.warning("prefill on %s failed (%s): prefilling locally", replica.id, exc)
            replica.eject()
            return None
        finally:
            self.manager.release(replica, ex.prompt_tokens)
        elapsed = self.clock() - started
        self.metrics.prefill_hop.observe(elapsed)
        self.manager.pools[pool].observe_prefill(replica, ex.prompt_tokens, started, self.clock())
        return answer if disagg.kv_params_of(answer) is not None else None

    async def complete(self, ex: Exchange) -> Response | RelayResponse:
        body = ex.body
        if ex.route == "disaggregated":
            prefilled = await self.prefill(ex)
            if prefilled is None:
                ex.route = "local"
            else:
                body = disagg.decode_request(ex.body, prefilled)
        return await self._decode(ex, body)

    async def _decode(self, ex: Exchange, body: dict[str, Any]) -> Response | RelayResponse:
        tried: set[str] = set()
        last_error = "no attempt"
        for _attempt in range(ex.profile.gateway.retries + 1):
            replica = await self._acquire_decode(ex, tried)
            tried.add(replica.id)
            try:
                response = await self._send(ex, replica, body)
            except RetryableFailure as exc:
                last_error = str(exc)
                log.warning("decode on %s failed before the first token: %s", replica.id, exc)
                continue
            if response.status_code == 200:
                self.manager.record_prefix(ex.profile.decode_pool, replica, ex.block_hashes)
            return response
        raise OpenAIError(503, f"every attempt failed: {last_error}", "replica_failed", None, 1)

    async def _acquire_decode(self, ex: Exchange, tried: set[str]) -> Replica:
        """A decode replica; if a live switch dropped the request's decode pool before the
        request started, the active profile's decode pool serves it."""
        for _ in range(SWITCHES_FOLLOWED):
            try:
                return await self.acquire(ex, ex.profile.decode_pool, tried)
            except PoolDropped:
                ex.profile = self.manager.profile
        raise OpenAIError(503, "the serving profile keeps changing", "no_replica", retry_after_s=5)

    async def _send(
        self, ex: Exchange, replica: Replica, body: dict[str, Any]
    ) -> Response | RelayResponse:
        """Send to one replica; `RetryableFailure` if it fails before its first byte."""
        if ex.route == "local":
            ex.local_sent = self.clock()
            self.manager.begin_local_prefill(replica, ex.prompt_tokens)
        try:
            response = await self.upstream.open(
                f"{replica.url}{ex.path}",
                body,
                {"X-Request-Id": ex.request_id},
                ex.profile.gateway.request_timeout_s,
            )
        except UpstreamError as exc:
            self._failed(replica, ex)
            raise RetryableFailure(str(exc)) from None
        if response.status >= 500:
            response.release()
            self._failed(replica, ex)
            raise RetryableFailure(f"worker answered {response.status}")
        if not ex.stream or response.status != 200:
            return await self._whole(ex, replica, response)
        body_chunks = chunks(response)
        try:
            first = await body_chunks.__anext__()
        except (UpstreamError, StopAsyncIteration) as exc:
            response.release()
            self._failed(replica, ex)
            raise RetryableFailure(f"stream ended before its first byte: {exc!r}") from None
        self._local_prefilled(ex, replica, sample=True)
        self.metrics.observe_ttft(ex.route, self.clock() - ex.arrived)
        headers = {"content-type": "text/event-stream; charset=utf-8", **ex.headers()}
        return RelayResponse(self._relay(ex, replica, response, first, body_chunks), 200, headers)

    def _local_prefilled(self, ex: Exchange, replica: Replica, sample: bool) -> None:
        """A local prefill is over: its first token (a rate sample when streamed) or a failure."""
        if ex.local_sent is None:
            return
        sent = ex.local_sent if sample else None
        self.manager.end_local_prefill(
            ex.profile.decode_pool, replica, ex.prompt_tokens, sent, self.clock()
        )
        ex.local_sent = None

    def _failed(self, replica: Replica, ex: Exchange) -> None:
        self._local_prefilled(ex, replica, sample=False)
        replica.eject()
        self.manager.release(replica, ex.prompt_tokens)

    async def _whole(self, ex: Exchange, replica: Replica, response: UpstreamResponse) -> Response:
        try:
            content = await response.read()
        except UpstreamError as exc:
            self._failed(replica, ex)
            raise RetryableFailure(str(exc)) from None
        finally:
            response.release()
        self._local_prefilled(ex, replica, sample=False)  # the whole answer: no prefill time
        self.manager.release(replica, ex.prompt_tokens)
        status = response.status
        if status == 200:
            self.metrics.observe_ttft(ex.route, self.clock() - ex.arrived)
        self.metrics.count_request(ex.route, status)
        media = response.content_type or "application/json"
        return Response(content, status_code=status, media_type=media, headers=ex.headers())

    async def _relay(
        self,
        ex: Exchange,
        replica: Replica,
        response: UpstreamResponse,
        first: bytes,
        body_chunks: AsyncIterator[bytes],
    ) -> AsyncGenerator[bytes, None]:
        status = "200"
        previous = self.clock()
        itl = self.metrics.itl_of(ex.route)
        try:
            yield first
            async for chunk in body_chunks:
                now = self.clock()
                itl.observe(now - previous)
                previous = now
                yield chunk
        except UpstreamError as exc:
            status = "502"
            replica.eject()
            log.warning("decode worker %s failed mid-stream: %s", replica.id, exc)
            yield sse_error_event(f"the worker serving this stream failed: {exc}")
        finally:
            response.release()
            self.manager.release(replica, ex.prompt_tokens)
            self.metrics.count_request(ex.route, status)
