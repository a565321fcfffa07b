"""compare_profiles' arithmetic: phase metrics from per-request results and the ratio table."""

from __future__ import annotations

import math

import pytest

from bench.compare_profiles import PLANS, LoadRun, phase_intervals, phase_metrics, ratio_table
from bench.metrics import RequestResult

pytestmark = pytest.mark.unit


def _chat(start: float, gaps: list[float]) -> RequestResult:
    times = [0.1]
    for gap in gaps:
        times.append(times[-1] + gap)
    return RequestResult(
        kind="chat",
        start=start,
        output_tokens=len(times),
        ttft=0.1,
        e2e=times[-1],
        token_times=times,
    )


def _long(ttft: float, route: str) -> RequestResult:
    return RequestResult(
        kind="long", start=0, output_tokens=1, ttft=ttft, e2e=ttft, token_times=[ttft], route=route
    )


def test_phase_metrics_split_chat_itl_from_long_prompt_ttft() -> None:
    run = LoadRun(
        results=[
            _chat(0, [0.1, 0.1, 2.5]),
            _chat(1, [0.1, 0.1]),
            _long(3.0, "disaggregated"),
            _long(5.0, "local"),
            RequestResult(kind="chat", start=2, error="HTTP 503"),
        ],
        wall_s=10.0,
    )
    m = phase_metrics(run, PLANS["vllm"])
    assert m["chat_itl_max_s"] == pytest.approx(2.5)
    assert m["chat_itl_p50_s"] == pytest.approx(0.1)
    assert m["long_ttft_p50_s"] == pytest.approx(4.0)  # (3 + 5) / 2
    assert m["chat_tokens_per_s"] == pytest.approx(0.7)  # (4 + 3) tokens / 10 s
    assert m["errors"] == 1 and m["first_error"] == "HTTP 503"
    assert m["long_routes"] == {"disaggregated": 1, "local": 1}


def test_sim_plan_reports_modelled_time() -> None:
    plan = PLANS["sim"]  # workers ran 1 / 0.2 = 5x slower than modelled
    run = LoadRun(results=[_chat(0, [0.5, 0.5]), _long(2.0, "local")], wall_s=10.0)
    m = phase_metrics(run, plan)
    assert m["chat_itl_p50_s"] == pytest.approx(0.1)  # 0.5 s wall x 0.2
    assert m["long_ttft_p50_s"] == pytest.approx(0.4)
    assert m["chat_tokens_per_s"] == pytest.approx(1.5)  # 3 tokens / (10 s x 0.2)


def test_ratio_table_divides_disaggregated_by_standard() -> None:
    plan = PLANS["vllm"]
    base = {
        key: 1.0
        for key in (
            "chat_itl_p50_s",
            "chat_itl_p99_s",
            "chat_itl_p99.9_s",
            "chat_itl_max_s",
            "long_ttft_p50_s",
            "long_ttft_p99_s",
            "chat_tokens_per_s",
            "goodput_rps",
        )
    }
    results = {
        "standard every 3 s": base,
        "disaggregated every 3 s": {**base, "chat_itl_p99_s": 0.06},
        "standard every 2 s": base,
        "disaggregated every 2 s": base,
        "always-disaggregated every 2 s": {**base, "long_ttft_p50_s": 4.0},
    }
    table = ratio_table(results, (3.0, 2.0))
    row = next(line for line in table.splitlines() if line.startswith("| chat ITL p99 |"))
    assert "| 0.06 |" in row
    ttft = next(line for line in table.splitlines() if line.startswith("| long-prompt TTFT p50"))
    assert ttft.rstrip().endswith("| 4.00 |")
    assert math.isnan(phase_metrics(LoadRun([], 1.0), plan)["chat_itl_p99_s"])


def test_phase_intervals_scale_with_the_measured_prefill_unless_given() -> None:
    vllm, sim = PLANS["vllm"], PLANS["sim"]
    assert phase_intervals(vllm, 6.8, None) == (7.8, 4.1)  # 6.8 x 1.15 = 7.82, 6.8 x 0.6
    assert phase_intervals(vllm, 6.8, (3.0, 2.0)) == (3.0, 2.0)
    assert phase_intervals(sim, math.nan, None) == sim.intervals  # fixed for simulated workers
    with pytest.raises(RuntimeError, match="no prefill time"):
        phase_intervals(vllm, math.nan, None)
