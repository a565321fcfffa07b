"""The latency arithmetic: percentiles, ITLs from token timestamps, TPOT, SLO and goodput."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.metrics import (
    RequestResult,
    goodput,
    inter_token_latencies,
    meets_slo,
    percentile,
    ratio,
    summarize,
    time_per_output_token,
    tokens_per_second,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # rank 1.5 -> (2 + 3) / 2
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([4.0, 1.0, 3.0, 2.0], 75, 3.25),  # sorted rank 2.25 -> 3 + 0.25 x 1
        ([7.0], 99.9, 7.0),
        (list(range(1001)), 99.9, 999.0),  # rank 999.0 exactly
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan_and_bad_q_is_an_error() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0], 101)


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
    st.floats(0, 100),
)
def test_percentile_agrees_with_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_summarize_names_every_statistic() -> None:
    summary = summarize([0.1, 0.2, 0.3, 0.4, 1.0])
    assert summary["count"] == 5
    assert summary["mean"] == pytest.approx(0.4)  # 2.0 / 5
    assert summary["p50"] == pytest.approx(0.3)
    assert summary["max"] == 1.0
    assert set(summary) == {"count", "mean", "p50", "p90", "p99", "p99.9", "max"}
    assert math.isnan(summarize([])["p99"])


def test_itl_from_token_timestamps() -> None:
    # tokens at 0.5 (first), 0.6, 0.8, 1.4 -> gaps 0.1, 0.2, 0.6
    assert inter_token_latencies([0.5, 0.6, 0.8, 1.4]) == pytest.approx([0.1, 0.2, 0.6])
    assert inter_token_latencies([0.5]) == []
    with pytest.raises(ValueError, match="non-decreasing"):
        inter_token_latencies([1.0, 0.9])


def test_tpot_is_mean_gap_after_first_token() -> None:
    # ttft 0.5, last token at 1.4, 4 tokens -> (1.4 - 0.5) / 3 = 0.3
    assert time_per_output_token(0.5, 1.4, 4) == pytest.approx(0.3)
    assert math.isnan(time_per_output_token(0.5, 0.5, 1))
    result = RequestResult(
        kind="chat", start=0, output_tokens=4, ttft=0.5, e2e=1.4, token_times=[0.5, 0.6, 0.8, 1.4]
    )
    assert result.tpot == pytest.approx(sum(result.itls) / len(result.itls))


@pytest.mark.parametrize(
    ("ttft", "tpot", "slo_ttft", "slo_itl", "expected"),
    [
        (0.5, 0.05, 1.0, 0.1, True),
        (1.5, 0.05, 1.0, 0.1, False),  # TTFT over
        (0.5, 0.15, 1.0, 0.1, False),  # ITL over
        (0.5, 0.15, 1.0, None, True),  # no ITL bound
        (9.0, math.nan, None, 0.1, True),  # one token, no TTFT bound
        (math.nan, 0.01, None, None, False),  # never got a token
    ],
)
def test_meets_slo_table(
    ttft: float, tpot: float, slo_ttft: float | None, slo_itl: float | None, expected: bool
) -> None:
    assert meets_slo(ttft, tpot, slo_ttft, slo_itl) is expected


def _result(ttft: float, e2e: float, tokens: int, error: str | None = None) -> RequestResult:
    return RequestResult(
        kind="chat", start=0, output_tokens=tokens, ttft=ttft, e2e=e2e, error=error
    )


def test_goodput_counts_only_successful_requests_within_slo() -> None:
    results = [
        _result(0.2, 1.2, 11),  # tpot 0.1 -> good
        _result(0.2, 3.2, 11),  # tpot 0.3 -> misses ITL
        _result(2.0, 3.0, 11),  # misses TTFT
        _result(0.1, 0.2, 2, error="HTTP 503"),  # failed
        _result(0.3, 0.8, 6),  # tpot 0.1 -> good
    ]
    # 2 good requests over 4 s = 0.5 req/s
    assert goodput(results, 4.0, slo_ttft=1.0, slo_itl=0.1) == pytest.approx(0.5)
    # without bounds every successful request counts: 4 / 4 s
    assert goodput(results, 4.0, None, None) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="duration"):
        goodput(results, 0, None, None)


def test_tokens_per_second_skips_errors() -> None:
    results = [_result(0.1, 1, 10), _result(0.1, 1, 30), _result(0.1, 1, 99, error="x")]
    assert tokens_per_second(results, 8.0) == pytest.approx(5.0)  # 40 / 8


def test_ratio_guards_zero_and_nan() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))
