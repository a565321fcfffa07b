"""A profile's routing and gateway sections: how the gateway routes a request between the
prefill and decode pools and picks a replica, and its own listener, limits, queueing, timeouts,
retries, scraping, tracing and logs.

Part of the profile layer (pdserve.profile re-exports every name here); a served model's own
`routing` keys (pdserve.profile_served.ModelRouting) go over RoutingSpec, see `Profile.routing_of`.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from pdserve.profile_pools import PositiveSeconds, Strict


class RoutingMode(str, Enum):
    disaggregated = "disaggregated"
    standard = "standard"


class Picker(str, Enum):
    least_load = "least-load"
    prefix_affinity = "prefix-affinity"
    round_robin = "round-robin"


class RoutingSpec(Strict):
    mode: RoutingMode = Field(RoutingMode.disaggregated, description="disaggregated | standard")
    prefill_threshold: int = Field(
        256,
        ge=0,
        description="Prompts with at least this many uncached tokens go to the prefill pool.",
    )
    picker: Picker = Field(Picker.least_load, description="Endpoint picker within a pool.")
    prefix_affinity_load_cap: int = Field(
        8, ge=1, description="prefix-affinity leaves the preferred replica above this load."
    )
    local_prefill_when_cold: bool = Field(
        True,
        description="Prefill locally on the decode pool while the prefill pool has no ready "
        "replica, instead of holding the request.",
    )
    ttft_budget_s: float | None = Field(
        None,
        gt=0,
        description="Seconds of prefill-pool backlog below which a long prompt always waits for "
        "the prefill pool; past it, it is prefilled locally only when the first token it gains "
        "outweighs the stall to the decode replica's streams. Unset: one prefill of the prompt "
        "at the decode pool's measured rate (a shorter backlog cannot lose to local prefill).",
    )


class GatewaySpec(Strict):
    host: str = Field("127.0.0.1")
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    body_timeout_s: PositiveSeconds = Field(
        30, description="A request body not all received this long after its headers gets 408."
    )
    idle_timeout_s: PositiveSeconds = Field(
        5,
        description="A connection without a whole request head for this long (idle after "
        "connecting or between requests, or trickling its headers) is closed.",
    )
    max_queued_per_pool: int = Field(256, ge=0, description="Held requests per pool before 429.")
    queue_timeout_s: PositiveSeconds = Field(120, description="Held longer than this -> 503.")
    start_deadline_s: PositiveSeconds | None = Field(
        None,
        description="A request that cannot start within this many seconds (queue ahead, "
        "capacity coming) gets 429 with Retry-After at once; a client overrides it with the "
        "`x-pdserve-deadline-s` header. Unset: queue_timeout_s.",
    )
    request_timeout_s: PositiveSeconds = Field(600)
    retries: int = Field(2, ge=0, le=10, description="Retries before the first token.")
    metrics_interval_s: PositiveSeconds = Field(0.5, description="Worker scrape period.")
    otlp_traces_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector (OTLP) the gateway sends request traces to, and "
        "its vLLM workers theirs (--otlp-traces-endpoint), e.g. http://otel-collector:4317. "
        "Unset: the gateway reads OTEL_EXPORTER_OTLP_ENDPOINT; neither: no traces.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Gateway logs: plain text, or one JSON object a line (a request's "
        "id, model, route and reason, pools, replicas, TTFT, tokens, status).",
    )
