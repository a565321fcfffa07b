"""Latency arithmetic shared by the load generator, the profile comparison and the simulator.

Pure functions over numbers: percentiles, inter-token latencies from token timestamps, TPOT,
SLO checks and goodput. No clocks, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default). NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50/p90/p99/p99.9 and max of `values` (NaN statistics when empty)."""
    summary: dict[str, float] = {"count": float(len(values))}
    summary["mean"] = sum(values) / len(values) if values else math.nan
    for q in PERCENTILES:
        summary[f"p{q:g}"] = percentile(values, q)
    summary["max"] = max(values) if values else math.nan
    return summary


def inter_token_latencies(token_times: Sequence[float]) -> list[float]:
    """Gaps between consecutive token arrival times (the first token's latency is TTFT, not an
    ITL). Times must be non-decreasing."""
    gaps = [later - earlier for earlier, later in zip(token_times, token_times[1:], strict=False)]
    if any(gap < 0 for gap in gaps):
        raise ValueError("token times must be non-decreasing")
    return gaps


def time_per_output_token(ttft: float, e2e: float, output_tokens: int) -> float:
    """TPOT: mean time per token after the first, (e2e - ttft) / (output_tokens - 1); NaN when
    there is at most one token."""
    if output_tokens <= 1:
        return math.nan
    return (e2e - ttft) / (output_tokens - 1)


@dataclass
class RequestResult:
    """One request as the client saw it. Times are seconds; token_times are relative to start."""

    kind: str
    start: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = math.nan
    e2e: float = math.nan
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    route: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def itls(self) -> list[float]:
        return inter_token_latencies(self.token_times)

    @property
    def tpot(self) -> float:
        return time_per_output_token(self.ttft, self.e2e, self.output_tokens)


def meets_slo(ttft: float, tpot: float, slo_ttft: float | None, slo_itl: float | None) -> bool:
    """A finished request meets the SLO when its TTFT and its mean inter-token latency (TPOT)
    are within the bounds; an unset bound always holds, a NaN TPOT (one token) holds."""
    if math.isnan(ttft):
        return False
    if slo_ttft is not None and ttft > slo_ttft:
        return False
    return slo_itl is None or math.isnan(tpot) or tpot <= slo_itl


def goodput(
    results: Iterable[RequestResult],
    duration_s: float,
    slo_ttft: float | None,
    slo_itl: float | None,
) -> float:
    """Requests per second that finished without error and met the SLO."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    good = sum(1 for r in results if r.ok and meets_slo(r.ttft, r.tpot, slo_ttft, slo_itl))
    return good / duration_s


def tokens_per_second(results: Iterable[RequestResult], duration_s: float) -> float:
    """Output tokens of successful requests per second of the run."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    return sum(r.output_tokens for r in results if r.ok) / duration_s


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is NaN or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator
