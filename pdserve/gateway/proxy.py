"""Forwarding one completion to the workers: the optional prefill hop, then decode, with failover.

Before the first byte from a decode worker the request may move to another replica (bounded by
`gateway.retries`); after it, a failing worker ends the stream with an SSE error event. A prefill
hop that fails falls back to local prefill on the decode pool.

A client that leaves cancels the task serving it (`client_watch`), wherever it is: held,
waiting for a decode slot, or decoding (closing the decode connection aborts it there). Blocks
a prefill pinned for it and no decode worker took (the client left during the prefill hop, or
after it and before a decode worker answered) would stay pinned until the lease ends; a release
request (`gateway.kv_release`) has a decode worker pull them at once. Each disaggregated request's
first token is recorded for the proof that its KV was pulled (`pools.kv_proof`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from pdserve import disagg
from pdserve.gateway.adapters import AdapterLoader
from pdserve.gateway.errors import OpenAIError, carries_error_event, sse_error_event, worker_error
from pdserve.gateway.kv_release import KvRelease
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.rollouts import VERSION_HEADER, Pick
from pdserve.gateway.streaming import RelayResponse
from pdserve.gateway.telemetry import RequestObs, Telemetry
from pdserve.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, chunks
from pdserve.policies.types import Route
from pdserve.pools.manager import (
    NoReplica,
    Overloaded,
    Placement,
    PoolDropped,
    PoolManager,
    Refused,
    Ticket,
)
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
    uncached_tokens: int | None = None  # the prompt less what the likely replica has cached
    deadline_s: float | None = None  # must start within this (x-pdserve-deadline-s), else 429
    ticket: Ticket | None = None  # its place in admission, from the moment it is forwarded
    traceparent: str | None = None  # the client's W3C trace context, passed on to the workers
    obs: RequestObs = field(default_factory=RequestObs)  # what telemetry records of it
    prefilled_by: str | None = None  # the prefill replica whose blocks the decode should pull
    kv_handed: bool = False  # a decode worker answered a request carrying those blocks
    rollout: Pick | None = None  # the version of a rolled-out model that serves it

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def headers(self) -> dict[str, str]:
        headers = {
            "x-pdserve-route": self.route,
            "x-pdserve-profile": self.profile.name,
            "x-request-id": self.request_id,
        }
        if self.rollout is not None:
            headers[VERSION_HEADER] = self.rollout.version
        return headers


def admission_error(exc: Overloaded | NoReplica) -> OpenAIError:
    """429 (queue full, or it cannot start within its deadline) or 503, with Retry-After."""
    if isinstance(exc, Refused):
        return OpenAIError(429, str(exc), "deadline_exceeded", retry_after_s=exc.retry_after_s)
    if isinstance(exc, Overloaded):
        return OpenAIError(429, str(exc), "pool_overloaded", retry_after_s=1)
    return OpenAIError(503, str(exc), "no_replica", retry_after_s=5)


class Forwarder:
    def __init__(
        self,
        manager: PoolManager,
        upstream: Upstream,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.manager = manager
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.telemetry = telemetry or Telemetry(metrics, clock=clock)
        manager.on_kv_fault(self._kv_fault)
        self.kv_release = KvRelease(manager, upstream)
        # a LoRA resident before each hop; residency re-learned by the manager's scrapes
        self.adapters = AdapterLoader(upstream, manager.adapter_residency, clock=clock)

    def _kv_fault(self, pool: str, reason: str) -> None:
        self.metrics.kv_not_moved.labels(pool, reason).inc()

    def ticket(self, ex: Exchange) -> Ticket:
        if ex.ticket is None:
            ex.ticket = self.manager.ticket(
                ex.profile,
                priority=ex.priority,
                prompt_tokens=ex.prompt_tokens,
                uncached_tokens=ex.uncached_tokens,
                affinity_key=ex.affinity_key,
                deadline_s=ex.deadline_s,
            )
            ex.ticket.prefer = self.adapters.holding(ex.profile, ex.body)
        return ex.ticket

    async def place(self, ex: Exchange) -> Placement:
        """Route and first replica, chosen when the request can start (late binding)."""
        ticket = self.ticket(ex)
        queued = self.clock()
        try:
            return await self.manager.place(ticket)
        except (Overloaded, NoReplica) as exc:
            raise admission_error(exc) from None
        finally:
            ex.route, ex.profile = ticket.route, ticket.profile
            self.telemetry.placed(ex, ticket, queued)

    async def acquire(self, ex: Exchange, pool: str, exclude: set[str]) -> Replica:
        try:
            return await self.manager.acquire_for(pool, self.ticket(ex), exclude)
        except PoolDropped:
            raise  # the caller re-plans under the active profile
        except (Overloaded, NoReplica) as exc:
            raise admission_error(exc) from None

    async def prefill(self, ex: Exchange, placed: Placement) -> dict[str, Any] | None:
        """The prefill hop; the prefill response, or None to prefill locally instead."""
        pool, replica = placed.pool, placed.replica
        started = self.clock()
        try:
            status, content = await self._prefill_answer(ex, replica)
            if status != 200:
                raise RetryableFailure(f"prefill worker answered {status}")
            answer: dict[str, Any] = json.loads(content)
        except (UpstreamError, ValueError, RetryableFailure) as exc:
            self.telemetry.prefill_failed(ex, exc)
            log.warning("prefill on %s failed (%s): prefilling locally", replica.id, exc)
            self.manager.eject(replica)
            self.manager.release(replica, ex.prompt_tokens)
            return None
        except asyncio.CancelledError:
            raise  # the hop goes on detached and gives the slot back when it ends
        except BaseException:
            self.manager.release(replica, ex.prompt_tokens)
            raise
        self.manager.release(replica, ex.prompt_tokens)
        elapsed = self.clock() - started
        self.telemetry.prefill_done(ex, elapsed)
        self.manager.observe_prefill(pool, replica, ex.prompt_tokens, started, self.clock())
        if disagg.kv_params_of(answer) is None:
            self.telemetry.prefill_fallback(ex, "no_kv_params")
            return None
        ex.prefilled_by = replica.id
        return answer

    async def _prefill_answer(self, ex: Exchange, replica: Replica) -> tuple[int, bytes]:
        """The prefill worker's answer. A client that leaves meanwhile does not abort it: vLLM
        cannot stop a prefill step under way, and one that finishes as the connection closes
        keeps its blocks pinned with nobody to name them (its answer lost) until the lease
        ends. The hop finishes detached instead and its blocks are released at once."""
        async with self.adapters.hold(ex.profile, ex.body, replica):
            hop = asyncio.ensure_future(
                self.upstream.post_json(
                    f"{replica.url}{ex.path}",
                    disagg.prefill_request(ex.body),
                    {"X-Request-Id": ex.request_id, **self.telemetry.hop(ex, "prefill", replica)},
                    ex.profile.gateway.request_timeout_s,
                )
            )
            try:
                return await asyncio.shield(hop)
            except asyncio.CancelledError:
                self.kv_release.start(self.kv_release.after_answer(ex, hop, replica))
                raise

    async def complete(self, ex: Exchange) -> Response | RelayResponse:
        self.telemetry.begin(ex)
        try:
            placed = await self.place(ex)
            if placed.route == "local":
                return await self._decode(ex, ex.body, placed.replica)
            prefilled = await self.prefill(ex, placed)
            if prefilled is None:
                ex.route = "local"
                return await self._decode(ex, ex.body, None)
            try:
                return await self._decode(ex, disagg.decode_request(ex.body, prefilled), None)
            except BaseException:
                if not ex.kv_handed:  # no decode worker has them: nobody else frees them
                    self.kv_release.start(self.kv_release.release(ex, prefilled))
                raise
        except BaseException as exc:
            self.telemetry.failed(ex, exc)
            raise
        finally:
            if ex.ticket is not None:
                self.manager.settle(ex.ticket)

    async def _decode(
        self, ex: Exchange, body: dict[str, Any], replica: Replica | None
    ) -> Response | RelayResponse:
        """Decode on `replica` (placed already) or a decode replica with room; retried on
        another before the first token."""
        tried: set[str] = set()
        last_error = "no attempt"
        for _attempt in range(ex.profile.gateway.retries + 1):
            if replica is None:
                replica = await self._acquire_decode(ex, tried)
            tried.add(replica.id)
            try:
                response = await self._send(ex, replica, body)
            except RetryableFailure as exc:
                last_error = str(exc)
                log.warning("decode on %s failed before the first token: %s", replica.id, exc)
                replica = None
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
                active = self.manager.profile.for_model(ex.profile.model.name)
                if active is None:  # the switch removed the request's model
                    break
                ex.profile = active
                self.ticket(ex).profile = ex.profile
        raise OpenAIError(503, "the serving profile keeps changing", "no_replica", retry_after_s=5)

    async def _send(
        self, ex: Exchange, replica: Replica, body: dict[str, Any]
    ) -> Response | RelayResponse:
        """Send to one replica; `RetryableFailure` if it fails before its first byte. However
        else it ends before a response is handed on (cancelled, an unexpected error), the
        replica's slot is given back: admission counts it, so a leaked slot would be lost."""
        if ex.route == "local":
            ex.local_sent = self.clock()
            self.manager.begin_local_prefill(replica, ex.prompt_tokens)
        try:
            return await self._exchange(ex, replica, body)
        except RetryableFailure:
            raise  # released where it failed
        except BaseException:
            self._local_prefilled(ex, replica, sample=False)
            self.manager.release(replica, ex.prompt_tokens)
            raise

    async def _exchange(
        self, ex: Exchange, replica: Replica, body: dict[str, Any]
    ) -> Response | RelayResponse:
        try:
            async with self.adapters.hold(ex.profile, body, replica):
                response = await self.upstream.open(
                    f"{replica.url}{ex.path}",
                    body,
                    {"X-Request-Id": ex.request_id, **self.telemetry.hop(ex, "decode", replica)},
                    ex.profile.gateway.request_timeout_s,
                )
        except UpstreamError as exc:
            self._failed(replica, ex)
            raise RetryableFailure(str(exc)) from None
        ex.kv_handed = ex.kv_handed or ex.prefilled_by is not None  # its answer frees them
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
        self._pulled(ex, replica)
        self.telemetry.first_token(ex, first)
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

    def _pulled(self, ex: Exchange, replica: Replica) -> None:
        """A disaggregated request's first token: its decode worker should have pulled the KV."""
        if ex.prefilled_by is not None and ex.route == "disaggregated":
            self.manager.record_disaggregated(replica, ex.prefilled_by, ex.prompt_tokens)

    def _failed(self, replica: Replica, ex: Exchange) -> None:
        self._local_prefilled(ex, replica, sample=False)
        self.manager.eject(replica)
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
            self._pulled(ex, replica)
        self.telemetry.whole(ex, status, content)
        media = response.content_type or "application/json"
        if status != 200:
            content, media = worker_error(status, content), "application/json"
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
        try:
            yield first
            async for chunk in body_chunks:
                self.telemetry.chunk(ex, chunk)
                if carries_error_event(chunk):
                    status = "502"  # the worker ended the stream with an error: not a success
                yield chunk
        except UpstreamError as exc:
            status = "502"
            self.manager.eject(replica)
            log.warning("decode worker %s failed mid-stream: %s", replica.id, exc)
            yield sse_error_event(f"the worker serving this stream failed: {exc}")
        finally:
            response.release()
            self.manager.release(replica, ex.prompt_tokens)
            self.telemetry.finish(ex, status)
