"""bench/join_pause's arithmetic: which chat gaps fall in a pulled request's join window, and how
long the model thread stayed inside nixl_agent.transfer in a py-spy speedscope file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.join_pause import SPY_RATE_HZ, join_report, transfer_runs
from bench.metrics import RequestResult

pytestmark = pytest.mark.unit


def _chat(start: float, gaps: list[float]) -> RequestResult:
    times = [0.1]
    for gap in gaps:
        times.append(times[-1] + gap)
    return RequestResult(kind="chat", start=start, token_times=times)


def test_only_the_gaps_near_the_first_token_count_for_the_join() -> None:
    # tokens every 0.1 s from t=100.1; one 0.5 s gap ending at t=105.6, another far later
    chat = _chat(100.0, [0.1] * 50 + [0.5] + [0.1] * 40 + [0.9] + [0.1] * 5)
    long = RequestResult(kind="long", start=100.0, ttft=5.0, route="disaggregated")
    report = join_report([chat], [long])
    [join] = report["joins"]
    assert join["window_gap_max_s"] == 0.5  # the 0.9 s gap at t=115.6 is outside 105 +- 1.5
    assert join["window_gaps_over_2x_median"] == 1
    assert report["chat_gap_max_s"] == 0.9
    assert report["chat_gap_p50_s"] == pytest.approx(0.1)


def test_transfer_stretches_are_contiguous_samples_in_nixl_agent_transfer(tmp_path: Path) -> None:
    frames = [{"name": "step"}, {"name": "nixl_agent.transfer"}, {"name": "forward"}]
    samples = [[0, 2], [0, 1], [0, 1], [0, 2], [0, 1], [0, 2], [0, 1], [0, 1], [0, 1]]
    data = {
        "shared": {"frames": frames},
        "profiles": [{"name": "idle", "samples": [[0]] * 3}, {"name": "model", "samples": samples}],
    }
    path = tmp_path / "spy.json"
    path.write_text(json.dumps(data))
    assert transfer_runs(path) == [2 / SPY_RATE_HZ, 1 / SPY_RATE_HZ, 3 / SPY_RATE_HZ]
