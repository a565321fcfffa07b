"""Turning a simulation's ledger into the numbers a comparison reports (pure numpy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.clustersim.events import SimResult
from bench.clustersim.replicas import itl_bin_upper


def gpu_seconds(result: SimResult) -> float:
    """Replica-seconds of every replica ever launched (starting, serving and draining)."""
    return sum(life.seconds(result.horizon_s) for life in result.lives)


def cost_usd(result: SimResult) -> float:
    """Sum over replicas of replica-seconds x its hourly price / 3600."""
    return sum(life.seconds(result.horizon_s) * life.price_per_hour / 3600 for life in result.lives)


def histogram_percentile(hist: dict[int, float], q: float) -> float:
    """The q-th percentile (upper bin edge) of a token-weighted log histogram."""
    total = sum(hist.values())
    if total <= 0:
        return math.nan
    running = 0.0
    for key in sorted(hist):
        running += hist[key]
        if running >= total * q / 100:
            return itl_bin_upper(key)
    return itl_bin_upper(max(hist))


def summarize(result: SimResult, slo_ttft: float, slo_tpot: float) -> dict[str, Any]:
    requests, ledger = result.requests, result.ledger
    first = np.array(ledger.first_token)
    finish = np.array(ledger.finish)
    dropped = np.array([d is not None for d in ledger.dropped])
    ttft = first - requests.arrival
    tokens = requests.output_tokens
    tpot = np.where(tokens > 1, (finish - first) / np.maximum(tokens - 1, 1), 0.0)
    done = ~dropped
    met = done & (ttft <= slo_ttft) & (tpot <= slo_tpot)
    n = len(requests)
    long_prompt = requests.prompt_tokens >= 1024
    hours = gpu_seconds(result) / 3600
    return {
        "requests": n,
        "finished": int(done.sum()),
        "dropped": int(dropped.sum()),
        "slo_attainment": float(met.sum() / n) if n else math.nan,
        "ttft_p50_s": _pct(ttft[done], 50),
        "ttft_p99_s": _pct(ttft[done], 99),
        "long_ttft_p99_s": _pct(ttft[done & long_prompt], 99),
        "tpot_p50_s": _pct(tpot[done & (tokens > 1)], 50),
        "tpot_p99_s": _pct(tpot[done & (tokens > 1)], 99),
        "itl_p50_s": histogram_percentile(ledger.itl_hist, 50),
        "itl_p99_s": histogram_percentile(ledger.itl_hist, 99),
        "itl_p999_s": histogram_percentile(ledger.itl_hist, 99.9),
        "disaggregated_share": float(np.mean(ledger.route_disagg)) if n else math.nan,
        "gpu_hours": hours,
        "cost_usd": cost_usd(result),
        "replicas_launched": len(result.lives),
        "peak_replicas": peak_replicas(result),
        "horizon_s": result.horizon_s,
    }


def peak_replicas(result: SimResult) -> dict[str, int]:
    """The most replicas (ready + starting) each pool had at any tick."""
    peaks: dict[str, int] = {}
    for _, pool, ready, starting, _ in result.timeline.rows:
        peaks[pool] = max(peaks.get(pool, 0), ready + starting)
    return peaks


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan
