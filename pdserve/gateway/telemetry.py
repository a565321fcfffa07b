"""What the gateway records of each request, fed by the forwarder's hooks: its metrics, its
spans (`tracing`) and its log line (`request_log`), all from one `RequestObs` it carries.

The hooks are on the request path, so they stay cheap: a few clock reads and counter
increments per request, a few byte scans per relayed chunk; JSON is parsed only in a chunk
that carries usage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from opentelemetry.trace import SpanKind
from prometheus_client import Histogram

from pdserve.gateway.metrics import GatewayMetrics
from pdserve.gateway.request_log import RequestLog, RequestRecord
from pdserve.gateway.tracing import RequestTrace, Tracing
from pdserve.gateway.upstream import UpstreamError
from pdserve.policies.types import RouteCause
from pdserve.profile import Profile, RoutingMode

if TYPE_CHECKING:
    from pdserve.gateway.proxy import Exchange
    from pdserve.pools.admission import Ticket
    from pdserve.pools.replica import Replica

Hop = Literal["prefill", "decode"]
FallbackReason = Literal["unreachable", "bad_status", "bad_response", "no_kv_params"]


@dataclass
class RequestObs:
    """One request's observations, from its placement to its last byte."""

    trace: RequestTrace | None = None
    cause: RouteCause | None = None
    detail: str = ""
    pools: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)
    fallback: FallbackReason | None = None
    queue_s: float | None = None
    prefill_s: float | None = None
    ttft_s: float | None = None
    last_token_at: float = 0.0
    tokens: int = 0  # generated tokens relayed so far (from usage where a chunk carries it)
    itl: Histogram | None = None  # the stream's inter-token latency histogram
    ended: bool = False


def local_cause(profile: Profile) -> RouteCause:
    """The cause of a route the route rule was not asked about: the prompt was short, or the
    profile has no prefill hop."""
    if profile.routing.mode is RoutingMode.disaggregated and profile.prefill_pool is not None:
        return "short_prompt"
    return "standard_mode"


class Telemetry:
    def __init__(
        self,
        metrics: GatewayMetrics,
        tracing: Tracing | None = None,
        log: RequestLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing or Tracing(None)
        self.log = log or RequestLog()
        self.clock = clock
        self.finished: list[Callable[[Exchange, str], None]] = []  # told of each request's end

    def begin(self, ex: Exchange) -> None:
        """The request is about to be placed (its root span starts at its arrival)."""
        if self.tracing.tracer is None:
            return
        trace = self.tracing.begin(
            f"POST {ex.path}",
            ex.traceparent,
            ex.arrived,
            {"pdserve.request_id": ex.request_id, "gen_ai.request.model": ex.profile.model.name},
        )
        if trace is not None:
            ex.obs.trace = trace
            trace.start("queue", {"pdserve.prompt_tokens": ex.prompt_tokens})

    def placed(self, ex: Exchange, ticket: Ticket, queued_at: float) -> None:
        """A route and a replica were chosen (or the request was refused while waiting)."""
        obs = ex.obs
        obs.queue_s = self.clock() - queued_at
        model = ex.profile.model.name
        self.metrics.child(self.metrics.queue_wait, ex.route, model).observe(obs.queue_s)
        obs.cause = ticket.route_cause or local_cause(ex.profile)
        obs.detail = ticket.route_reason
        if obs.trace is not None:
            obs.trace.end("queue")
            attributes = {"pdserve.route": ex.route, "pdserve.route.cause": obs.cause}
            obs.trace.start("route", {**attributes, "pdserve.route.reason": obs.detail})
            obs.trace.end("route")

    def hop(self, ex: Exchange, hop: Hop, replica: Replica) -> dict[str, str]:
        """A request to a worker is about to go: the trace headers it carries."""
        obs = ex.obs
        pool = ex.profile.decode_pool if hop == "decode" else ex.profile.prefill_pool or ""
        if not obs.pools or obs.pools[-1] != pool:
            obs.pools.append(pool)
        obs.replicas.append(replica.id)
        trace = obs.trace
        if trace is None:
            return {"traceparent": ex.traceparent} if ex.traceparent else {}
        attributes = {"pdserve.pool": pool, "pdserve.replica": replica.id}
        trace.start(hop, {**attributes, "server.address": replica.url}, kind=SpanKind.CLIENT)
        if hop == "decode":
            trace.start("first_token", {}, parent="decode")
        return trace.headers(hop)

    def prefill_done(self, ex: Exchange, seconds: float) -> None:
        ex.obs.prefill_s = seconds
        self.metrics.child(self.metrics.prefill_hop, ex.profile.model.name).observe(seconds)
        if ex.obs.trace is not None:
            ex.obs.trace.end("prefill")

    def prefill_failed(self, ex: Exchange, exc: Exception) -> None:
        """The prefill worker could not be reached, answered an error, or not JSON."""
        if isinstance(exc, ValueError):
            self.prefill_fallback(ex, "bad_response")
        elif isinstance(exc, UpstreamError):
            self.prefill_fallback(ex, "unreachable")
        else:
            self.prefill_fallback(ex, "bad_status")

    def prefill_fallback(self, ex: Exchange, reason: FallbackReason) -> None:
        """The prefill hop failed: the request is prefilled on the decode pool instead."""
        ex.obs.fallback, ex.obs.cause = reason, "prefill_failed"
        self.metrics.child(self.metrics.fallbacks, reason, ex.profile.model.name).inc()
        if ex.obs.trace is not None:
            ex.obs.trace.end("prefill", reason)

    def first_token(self, ex: Exchange, first: bytes) -> None:
        """The decode worker's first chunk of a stream."""
        obs, now = ex.obs, self.clock()
        obs.ttft_s = now - ex.arrived
        obs.last_token_at = now
        self.metrics.child(self.metrics.ttft, ex.route, ex.profile.model.name).observe(obs.ttft_s)
        obs.tokens += chunk_tokens(obs.tokens, first, first=True)[0]
        obs.itl = self.metrics.itl_of(ex.route, ex.profile.model.name)
        if obs.trace is not None:
            obs.trace.end("first_token")
            obs.trace.start("stream", {}, parent="decode")

    def chunk(self, ex: Exchange, chunk: bytes) -> None:
        """A later chunk of a stream: its tokens, each with its share of the gap since the
        previous token."""
        obs = ex.obs
        if b'"usage"' in chunk or chunk.endswith(b"[DONE]\n\n"):
            counted, timed = chunk_tokens(obs.tokens, chunk)
        else:  # the common chunk: its events are its tokens
            counted = timed = chunk.count(b"\n\n")
        if not counted:
            return
        now, first = self.clock(), obs.tokens == 0
        obs.tokens += counted
        if first:
            timed -= 1  # the first token after a chat stream's role event: TTFT's, not a gap
        if timed == 1 and obs.itl is not None:
            obs.itl.observe(now - obs.last_token_at)
        elif timed > 1 and obs.itl is not None:
            gap = (now - obs.last_token_at) / timed
            for _ in range(timed):
                obs.itl.observe(gap)
        obs.last_token_at = now

    def whole(self, ex: Exchange, status: int, content: bytes) -> None:
        """A response that came in one piece (not streamed, or an error)."""
        if status == 200:
            ex.obs.ttft_s = self.clock() - ex.arrived
            model = ex.profile.model.name
            self.metrics.child(self.metrics.ttft, ex.route, model).observe(ex.obs.ttft_s)
            ex.obs.tokens = usage_tokens(content) or 0
        self.finish(ex, status)

    def failed(self, ex: Exchange, exc: BaseException) -> None:
        status = getattr(exc, "status", None)
        if status is None:
            status = 499 if isinstance(exc, asyncio.CancelledError) else 500
        self.finish(ex, status, f"{type(exc).__name__}: {exc}")

    def finish(self, ex: Exchange, status: int | str, error: str | None = None) -> None:
        """The request is over (once: a later call does nothing)."""
        obs = ex.obs
        if obs.ended:
            return
        obs.ended = True
        status, model, route = str(status), ex.profile.model.name, ex.route
        for hook in self.finished:
            hook(ex, status)
        self.metrics.count_request(route, status, model)
        if obs.cause is not None:
            self.metrics.child(self.metrics.route_decisions, route, obs.cause, model).inc()
        if status == "200":
            m = self.metrics
            m.child(m.prompt_tokens, route, model).inc(ex.prompt_tokens)
            m.child(m.generation_tokens, route, model).inc(obs.tokens)
            m.child(m.e2e, route, model).observe(self.clock() - ex.arrived)
        if obs.trace is not None:
            failed = error if error is not None else (None if status == "200" else status)
            obs.trace.finish(self._span_attributes(ex, status), failed)
        if self.log.enabled:
            self.log.write(self.record(ex, status))

    def _span_attributes(self, ex: Exchange, status: str) -> dict[str, str | int | float]:
        return {
            "http.response.status_code": int(status) if status.isdigit() else 0,
            "pdserve.route": ex.route,
            "pdserve.route.cause": ex.obs.cause or "",
            "gen_ai.usage.input_tokens": ex.prompt_tokens,
            "gen_ai.usage.output_tokens": ex.obs.tokens,
        }

    def record(self, ex: Exchange, status: str) -> RequestRecord:
        obs = ex.obs
        return RequestRecord(
            id=ex.request_id,
            model=ex.profile.model.name,
            route=ex.route,
            reason=obs.cause or "",
            detail=obs.detail,
            status=status,
            pools=obs.pools,
            replicas=obs.replicas,
            fallback=obs.fallback,
            prompt_tokens=ex.prompt_tokens,
            completion_tokens=obs.tokens,
            queue_s=obs.queue_s,
            prefill_s=obs.prefill_s,
            ttft_s=obs.ttft_s,
            e2e_s=self.clock() - ex.arrived,
            trace_id=obs.trace.trace_id if obs.trace is not None else None,
        )


def chunk_tokens(seen: int, chunk: bytes, first: bool = False) -> tuple[int, int]:
    """(tokens to count, tokens to time) in one relayed SSE chunk, `seen` counted before it.

    With usage in the chunk (vLLM's `continuous_usage_stats`, or the final `include_usage`
    event) the count is what its `completion_tokens` adds; a final usage-only event adds what
    earlier chunks carried beyond one token each, so it is counted but not timed. Without
    usage, each content event is one token; a chat stream's role event (in its `first` chunk)
    and the closing `[DONE]` are none. Events are counted by their blank-line ends: JSON
    escapes newlines, so a token's text has none. A typical chunk costs two scans of its bytes.
    """
    events = chunk.count(b"\n\n")
    if chunk.endswith(b"[DONE]\n\n"):
        events -= 1
    if first and b'"role"' in chunk:
        events -= 1
    if b'"usage"' not in chunk:
        return events, events
    usage_only = b'"choices":[]' in chunk
    content = max(0, events - usage_only)
    total = usage_tokens(chunk)
    if total is None:
        return content, content
    counted = max(0, total - seen)
    return counted, min(counted, content) if usage_only else counted


def usage_tokens(data: bytes) -> int | None:
    """`usage.completion_tokens` of a JSON body or of the last SSE event that has one."""
    if b'"usage"' not in data:
        return None
    found = None
    for part in data.split(b"\n\n") if data.lstrip().startswith(b"data:") else [data]:
        text = part.strip().removeprefix(b"data:")
        if b'"usage"' not in text:
            continue
        try:
            usage = json.loads(text).get("usage")
            found = int(usage["completion_tokens"]) if isinstance(usage, dict) else found
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found
