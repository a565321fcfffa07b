"""The proof-that-KV-moved policy: spans of expected and counted pulled tokens in, faults out."""

from __future__ import annotations

import pytest

from pdserve.policies.kv_proof import KvProofSettings, PullSpan, judge

pytestmark = pytest.mark.unit

SETTINGS = KvProofSettings(min_ratio=0.5, min_expected_tokens=64, quarantine_s=30.0)


def span(decode: str, by_prefill: dict[str, int], credit: float | None, failed: float = 0.0):
    return PullSpan(decode, sum(by_prefill.values()), by_prefill, credit, failed)


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        # 999 expected, 999 counted: proven
        ([span("d1", {"p1": 999}, 999.0)], []),
        # 999 expected, 600 counted >= 0.5 x 999 = 499.5: proven (part served from cache, etc.)
        ([span("d1", {"p1": 999}, 600.0)], []),
        # 999 expected, 0 counted, no failed transfer: nothing was pulled (no connector)
        ([span("d1", {"p1": 999}, 0.0)], [("p1", "prefill", "not_pulled")]),
        # 999 expected, 100 counted < 499.5 and the decode's NIXL failures grew: pulls failed
        ([span("d1", {"p1": 999}, 100.0, failed=3)], [("p1", "prefill", "pull_failed")]),
        # the decode exports no counter: no proof, the decode replica is named
        ([span("d1", {"p1": 999}, None)], [("d1", "decode", "no_metric")]),
        # 63 expected < 64: too little to judge
        ([span("d1", {"p1": 63}, 0.0)], []),
        # p1's KV arrived on d1 but not on d2: d2's connector is at fault, not p1
        (
            [span("d1", {"p1": 500}, 500.0), span("d2", {"p1": 500}, 0.0)],
            [("d2", "decode", "not_pulled")],
        ),
        # d1 got p1's and p2's requests and counted none; p2 is proven on d2: only p1 is blamed
        (
            [span("d1", {"p1": 500, "p2": 500}, 0.0), span("d2", {"p2": 500}, 500.0)],
            [("p1", "prefill", "not_pulled")],
        ),
    ],
)
def test_judge(spans: list[PullSpan], expected: list[tuple[str, str, str]]) -> None:
    verdict = judge(spans, now=100.0, settings=SETTINGS)
    assert [(f.replica, f.role, f.reason) for f in verdict.faults] == expected
    assert all(f.until == 130.0 for f in verdict.faults)  # now 100 + quarantine 30


def test_judged_spans_and_the_credit_they_leave() -> None:
    verdict = judge(
        [span("d1", {"p1": 400}, 1000.0), span("d2", {"p1": 10}, 0.0), span("d3", {"p1": 900}, 0)],
        now=0.0,
        settings=SETTINGS,
    )
    assert verdict.judged == ("d1", "d3")  # d2's 10 tokens wait for more
    # d1: 1000 counted - 400 expected = 600 left for requests still settling; d3 failed: 0
    assert verdict.credit_left == {"d1": 600.0, "d3": 0.0}


def test_the_detail_says_how_much_was_pulled() -> None:
    (fault,) = judge([span("d1", {"p1": 999}, 12.0)], now=0.0, settings=SETTINGS).faults
    assert "counted 12 of 999 prompt tokens from pulled KV" in fault.detail
