"""OpenTelemetry traces of the gateway's requests, exported over OTLP when configured.

One `Tracing` per app, built in its lifespan: its own tracer provider, never the global one.
The collector comes from the profile (`gateway.otlp_traces_endpoint`) or the environment
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`), the protocol from
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`/`OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, as vLLM's default,
or `http/protobuf`). With no collector there is no tracer and no span: a request pays one
`is None` test. Whatever it is, a client's W3C `traceparent` reaches the workers: as the
gateway's hop span's context when tracing, unchanged when not.

A request's spans (`RequestTrace`): the root `POST /v1/...` from arrival to the last byte, and
under it `queue` (until a route and a replica are chosen), `route` (the decision, its cause and
reason), `prefill` (the hop, a client span whose context goes to the prefill worker) and
`decode` (the same to the decode worker) with `first_token` and `stream` under it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Attributes = Mapping[str, str | int | float | bool]
PROPAGATOR = TraceContextTextMapPropagator()


def otlp_endpoint(configured: str | None, env: Mapping[str, str]) -> str | None:
    """The collector traces go to: the profile's, else the standard environment variables."""
    return (
        configured
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


def otlp_exporter(endpoint: str, env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPExporter,
        )

        url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else f"{endpoint}/v1/traces"
        return HTTPExporter(endpoint=url)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))


class Tracing:
    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("pdserve.gateway") if provider is not None else None

    @classmethod
    def configured(cls, endpoint: str | None, env: Mapping[str, str]) -> Tracing:
        """OTLP export to the configured collector, or no tracing at all."""
        found = otlp_endpoint(endpoint, env)
        if found is None:
            return cls(None)
        return cls.exporting(otlp_exporter(found, env), env, batch=True)

    @classmethod
    def exporting(
        cls, exporter: SpanExporter, env: Mapping[str, str] | None = None, batch: bool = False
    ) -> Tracing:
        """Spans to `exporter`: batched off the event loop (OTLP), or as each ends (tests)."""
        name = (env or {}).get("OTEL_SERVICE_NAME", "pdserve-gateway")
        provider = TracerProvider(
            resource=Resource.create({"service.name": name}), shutdown_on_exit=False
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider)

    def begin(
        self, name: str, traceparent: str | None, started: float, attributes: Attributes
    ) -> RequestTrace | None:
        """The root span of one request (a child of the client's `traceparent`, if any) that
        arrived at monotonic time `started`; None when not tracing."""
        if self.tracer is None:
            return None
        parent = PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        root = self.tracer.start_span(
            name, parent, SpanKind.SERVER, attributes, start_time=epoch_ns(started)
        )
        return RequestTrace(self.tracer, root)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes what the batch processor holds


class RequestTrace:
    """The spans of one request. Spans are started and ended by the gateway's hooks; a span
    that is still open when the request ends is ended with it."""

    def __init__(self, tracer: trace.Tracer, root: Span) -> None:
        self.tracer = tracer
        self.root = root
        self.open: dict[str, Span] = {}

    def start(
        self,
        name: str,
        attributes: Attributes,
        parent: str | None = None,
        started: float | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span:
        """A child of the root (or of the open span `parent`), open until `end(name)`."""
        self.end(name)  # a retried hop: the attempt before it is over
        under = self.open.get(parent, self.root) if parent else self.root
        context = trace.set_span_in_context(under)
        start_ns = epoch_ns(started) if started is not None else None
        span = self.tracer.start_span(name, context, kind, attributes, start_time=start_ns)
        self.open[name] = span
        return span

    def end(
        self, name: str, error: str | None = None, attributes: Attributes | None = None
    ) -> None:
        span = self.open.pop(name, None)
        if span is None:
            return
        if attributes:
            span.set_attributes(attributes)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def headers(self, name: str) -> dict[str, str]:
        """The W3C trace context of the open span `name`, for the request it sends."""
        carrier: dict[str, str] = {}
        span = self.open.get(name, self.root)
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def finish(self, attributes: Attributes, error: str | None = None) -> None:
        for name in list(self.open)[::-1]:
            self.end(name, error)
        self.root.set_attributes(attributes)
        if error is not None:
            self.root.set_status(Status(StatusCode.ERROR, error))
        self.root.end()

    @property
    def trace_id(self) -> str:
        return format(self.root.get_span_context().trace_id, "032x")


def epoch_ns(monotonic_s: float) -> int:
    """A `time.monotonic()` reading as the wall-clock nanoseconds OpenTelemetry stamps spans
    with (the gateway times requests on the monotonic clock)."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)
