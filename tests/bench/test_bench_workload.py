"""Arrival processes, the class mix and CSV traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import workload

pytestmark = pytest.mark.unit


def test_poisson_arrivals_have_the_rate_and_stay_in_the_window() -> None:
    rng = np.random.default_rng(0)
    times = workload.poisson_arrivals(50.0, 200.0, rng)
    assert len(times) == pytest.approx(10_000, rel=0.05)  # 50/s x 200 s
    assert np.all(np.diff(times) >= 0) and times[-1] < 200.0
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1


def test_burst_is_ten_times_the_base_rate() -> None:
    rng = np.random.default_rng(1)
    rate = workload.burst_rate(5.0, 10.0, start_s=300.0, length_s=100.0)
    times = workload.modulated_arrivals(rate, 50.0, 600.0, rng)
    inside = np.sum((times >= 300) & (times < 400)) / 100
    outside = np.sum((times < 300) | (times >= 400)) / 500
    assert inside / outside == pytest.approx(10.0, rel=0.15)


def test_on_off_sends_nothing_when_off() -> None:
    rng = np.random.default_rng(2)
    times = workload.modulated_arrivals(workload.on_off_rate(20.0, 5.0, 10.0), 20.0, 150.0, rng)
    assert np.all(np.mod(times, 15.0) < 5.0)


def test_mix_lengths_follow_their_class() -> None:
    rng = np.random.default_rng(3)
    requests = workload.with_mix(np.linspace(0, 10, 3000), {"chat": 0.5, "rag": 0.5}, rng)
    rag = requests.prompt_tokens[requests.kind == requests.kinds.index("rag")]
    assert rag.min() >= 1620 and rag.max() <= 1980  # 1800 +- 10%
    assert np.mean(requests.kind == requests.kinds.index("rag")) == pytest.approx(0.5, abs=0.05)


def test_parse_mix_normalises_and_rejects_unknown_classes() -> None:
    assert workload.parse_mix("chat=3,rag=1") == {"chat": 0.75, "rag": 0.25}
    with pytest.raises(ValueError, match="unknown request class"):
        workload.parse_mix("video=1")


def test_trace_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    original = workload.with_mix(workload.poisson_arrivals(5, 10, rng), workload.DEFAULT_MIX, rng)
    path = tmp_path / "trace.csv"
    workload.write_trace(original, path)
    loaded = workload.read_trace(path)
    assert np.allclose(loaded.arrival, original.arrival, atol=1e-6)
    assert np.array_equal(loaded.prompt_tokens, original.prompt_tokens)
    assert np.array_equal(loaded.output_tokens, original.output_tokens)
    (tmp_path / "bad.csv").write_text("time,prompt\n1,2\n")
    with pytest.raises(ValueError, match="t, prompt_tokens, output_tokens"):
        workload.read_trace(tmp_path / "bad.csv")
