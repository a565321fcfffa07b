"""Reading a worker's /metrics: the scraped vLLM gauges out of a real vLLM server's body (the
sum over engines on a small body is in test_replica.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.pools.replica import parse_worker_metrics

pytestmark = pytest.mark.unit

# GET /metrics of `pdserve worker --profile local --pool decode` (vLLM CPU 0.32.0, tiny model)
# after three completions: every gauge is 0.0 there, so the tests set their own values
REAL_BODY = (Path(__file__).parent / "data" / "vllm-0.32-cpu-metrics.txt").read_text()
ENGINE = '{engine="0",model_name="tiny"}'
BY_REASON = '{engine="0",model_name="tiny",reason="capacity"}'


def _with_values(body: str, values: dict[str, float]) -> str:
    for line, value in values.items():
        assert f"{line} 0.0\n" in body, line
        body = body.replace(f"{line} 0.0\n", f"{line} {value}\n")
    return body


IDLE_KV_COUNTERS = {"kv_received_tokens": 0.0, "kv_failed_pulls": 0.0}  # the proof's counters


def test_the_real_body_gives_every_gauge() -> None:
    # all present at 0.0: a parse that finds none would give {}
    values = {"running": 0.0, "waiting": 0.0, "kv_usage": 0.0, **IDLE_KV_COUNTERS}
    assert parse_worker_metrics(REAL_BODY) == values


def test_the_real_body_with_load_ignores_the_longer_names_beside_the_gauges() -> None:
    body = _with_values(
        REAL_BODY,
        {
            f"vllm:num_requests_running{ENGINE}": 3.0,
            f"vllm:num_requests_waiting{ENGINE}": 4.0,
            f"vllm:kv_cache_usage_perc{ENGINE}": 0.25,
            # same prefix as num_requests_waiting: not a waiting count of its own
            f"vllm:num_requests_waiting_by_reason{BY_REASON}": 7.0,
        },
    )
    loaded = {"running": 3.0, "waiting": 4.0, "kv_usage": 0.25, **IDLE_KV_COUNTERS}
    assert parse_worker_metrics(body) == loaded


@pytest.mark.parametrize(
    "body",
    [
        'vllm:num_requests_running{engine="0" 3.0',  # unclosed labels
        "vllm:num_requests_running three",
    ],
)
def test_a_body_that_does_not_parse_gives_no_values(body: str) -> None:
    assert parse_worker_metrics(body) == {}
