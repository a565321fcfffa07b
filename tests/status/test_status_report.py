"""The live view's arithmetic: histogram quantiles and counter rates over a window, and the
report and tables built from /admin/pools and two /metrics scrapes."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from pdserve.status.poll import History
from pdserve.status.report import build_report
from pdserve.status.scrape import bucket_delta, parse, quantile, rate
from pdserve.status.view import render

pytestmark = pytest.mark.unit

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # rank 0.5 x 8 = 4 falls in (0.1, 0.5] holding 2..6: 0.1 + 0.4 x (4 - 2) / 4 = 0.3
        (0.5, {0.1: 2, 0.5: 6, 1.0: 8, INF: 8}, 0.3),
        # rank 0.99 x 8 = 7.92 in (0.5, 1] holding 6..8: 0.5 + 0.5 x 1.92 / 2 = 0.98
        (0.99, {0.1: 2, 0.5: 6, 1.0: 8, INF: 8}, 0.98),
        # rank 0.5 x 4 = 2 in the first bucket, from 0: 0.05 x 2 / 4 = 0.025
        (0.5, {0.05: 4, 0.1: 4, INF: 4}, 0.025),
        # rank 0.99 x 10 = 9.9 beyond the last finite bound (1 of 10 in +Inf): that bound, 2.5
        (0.99, {1.0: 5, 2.5: 9, INF: 10}, 2.5),
        # no observation in the window
        (0.5, {0.1: 0, INF: 0}, None),
        (0.5, {}, None),
    ],
)
def test_quantile_is_prometheus_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    got = quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_bucket_delta_is_the_window_and_a_reset_counts_from_zero() -> None:
    old = {0.1: 5.0, 1.0: 9.0, INF: 10.0}
    assert bucket_delta({0.1: 6.0, 1.0: 12.0, INF: 14.0}, old) == {0.1: 1.0, 1.0: 3.0, INF: 4.0}
    assert bucket_delta({0.1: 1.0, 1.0: 1.0, INF: 2.0}, old) == {0.1: 1.0, 1.0: 1.0, INF: 2.0}


def test_rate_per_second_and_a_reset_counter() -> None:
    # (30 - 10) / 4 s = 5/s; a counter that fell (7 < 20) restarted: 7 / 4 = 1.75/s
    assert rate({("a",): 30.0, ("b",): 7.0}, {("a",): 10.0, ("b",): 20.0}, 4.0) == {
        ("a",): 5.0,
        ("b",): 1.75,
    }


def _metrics(ok: int, failed: int, fast: int, slow: int) -> str:
    """Gateway-like text: `fast` TTFTs <= 50 ms and `slow` ones in (0.1, 0.25], all on route
    disaggregated, spread over two model label values that the view sums."""
    half_fast, half_slow = fast // 2, slow // 2
    lines = [
        "# TYPE pdserve_requests counter",
        f'pdserve_requests_total{{route="disaggregated",status="200"}} {ok}',
        f'pdserve_requests_total{{route="disaggregated",status="503"}} {failed}',
        "# TYPE pdserve_generation_tokens counter",  # 10 a request, 5 of it on the local route
        f'pdserve_generation_tokens_total{{route="disaggregated",model="a"}} {5 * ok}',
        f'pdserve_generation_tokens_total{{route="local",model="a"}} {5 * ok}',
        "# TYPE pdserve_prompt_tokens counter",
        f'pdserve_prompt_tokens_total{{route="disaggregated",model="a"}} {100 * ok}',
        f'pdserve_prompt_tokens_total{{route="local",model="a"}} {7 * ok}',
        "# TYPE pdserve_ttft_seconds histogram",
    ]
    for model, f, s in (("a", half_fast, half_slow), ("b", fast - half_fast, slow - half_slow)):
        for le, count in (("0.05", f), ("0.1", f), ("0.25", f + s), ("+Inf", f + s)):
            lines.append(
                f'pdserve_ttft_seconds_bucket{{route="disaggregated",model="{model}",le="{le}"}}'
                f" {count}"
            )
        lines.append(f'pdserve_ttft_seconds_count{{route="disaggregated",model="{model}"}} {f + s}')
        lines.append(f'pdserve_ttft_seconds_sum{{route="disaggregated",model="{model}"}} 1.0')
    return "\n".join(lines) + "\n"


POOLS = {
    "decode": {
        "role": "decode",
        "in_profile": True,
        "replicas": {"ready": 2, "starting": 1, "draining": 0, "failed": 0},
        "desired": 3,
        "queue_depth": 4,
        "queued_prompt_tokens": 900,
        "concurrency": 19,
        "last_decision": {"reason": "decode: concurrency 19 / target 8 = 2.38 -> desired 3"},
    }
}


def test_report_over_a_window_of_two_scrapes() -> None:
    old = parse(_metrics(ok=100, failed=2, fast=60, slow=40), at=10.0)
    # in 20 s: 40 ok + 2 failed requests; 10 fast and 30 slow first tokens
    new = parse(_metrics(ok=140, failed=4, fast=70, slow=70), at=30.0)
    report = build_report(POOLS, new, old)
    assert report["window_s"] == 20.0
    route = report["routes"]["disaggregated"]
    assert route["requests_per_s"] == pytest.approx(42 / 20)
    assert route["errors_per_s"] == pytest.approx(2 / 20)
    # p50: rank 20 of 40, 10 in [0, 0.05]: (0.1, 0.25] holds 10..40 -> 0.1 + 0.15 x 10/30 = 0.15
    assert route["ttft_s"]["p50"] == pytest.approx(0.15)
    # p99: rank 39.6 -> 0.1 + 0.15 x 29.6/30 = 0.248
    assert route["ttft_s"]["p99"] == pytest.approx(0.248)
    pool = report["pools"]["decode"]
    assert pool["replicas"] == {"ready": 2, "starting": 1, "draining": 0, "failed": 0}
    assert (pool["desired"], pool["queue"], pool["concurrency"]) == (3, 4, 19)
    assert pool["reason"].endswith("desired 3")
    assert pool["tokens_per_s"] == pytest.approx(10 * 40 / 20)  # generated: 400 tokens in 20 s


def test_tokens_per_s_of_a_prefill_pool_are_its_prompt_tokens() -> None:
    pools = {"prefill": {"role": "prefill"}, "decode": {"role": "decode"}}
    old = parse(_metrics(ok=100, failed=0, fast=0, slow=0), at=0.0)
    new = parse(_metrics(ok=110, failed=0, fast=0, slow=0), at=5.0)
    tokens = {name: p["tokens_per_s"] for name, p in build_report(pools, new, old)["pools"].items()}
    # prefill: disaggregated prompts 100 x 10 / 5 s = 200; decode: 10 x 10 / 5 s = 20
    assert tokens == {"prefill": 200.0, "decode": 20.0}


def test_first_scrape_has_no_rates_and_history_keeps_a_minute() -> None:
    first = parse(_metrics(1, 0, 1, 0), at=0.0)
    report = build_report(POOLS, first, None)
    assert report["routes"]["disaggregated"]["requests_per_s"] is None
    assert report["routes"]["disaggregated"]["ttft_s"] == {"p50": None, "p99": None}
    history = History(window_s=60.0)
    scrapes = [parse("", at=float(t)) for t in range(0, 100, 10)]
    baselines = [history.add(scrape) for scrape in scrapes]
    assert baselines[0] is None
    # at 90 s the baseline is the newest scrape at least 60 s old: 30 s
    assert baselines[-1] is not None and baselines[-1].at == 30.0


def test_rendered_tables_carry_the_report_figures() -> None:
    old = parse(_metrics(ok=100, failed=2, fast=60, slow=40), at=10.0)
    new = parse(_metrics(ok=140, failed=4, fast=70, slow=70), at=30.0)
    report = {"url": "http://gw", **build_report(POOLS, new, old)}
    console = Console(record=True, width=120)
    console.print(render(report))
    text = console.export_text()
    decode = next(line for line in text.splitlines() if line.startswith("│ decode"))
    cells = [cell.strip() for cell in decode.split("│")[3:12]]
    assert cells == ["2", "1", "0", "0", "3", "4", "19", "900", "20.0"]
    route = next(line for line in text.splitlines() if "disaggregated" in line)
    assert [cell.strip() for cell in route.split("│")[2:6]] == [
        "2.1",
        "0.1",
        "150.0 ms",
        "248.0 ms",
    ]
    assert "  decode: concurrency 19 / target 8" in text
    assert "last 20 s" in text


def test_an_unreachable_gateway_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pdserve.processes import free_port
    from pdserve.status.command import run_status

    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    assert run_status(url, once=True, interval_s=0) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {url}") and err.count("\n") == 1
