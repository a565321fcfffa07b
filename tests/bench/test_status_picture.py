"""bench/status_picture: the frame it pictures, and the PNG it draws from a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.status_picture import busiest, draw

pytestmark = pytest.mark.unit


def _report(at: float, ready: int, starting: int, concurrency: int, routes: int) -> dict[str, Any]:
    replicas = {"ready": ready, "starting": starting, "draining": 0, "failed": 0}
    pool = {"role": "decode", "replicas": replicas, "desired": ready + starting, "queue": 0,
            "queued_prompt_tokens": 0, "concurrency": concurrency, "tokens_per_s": 1.0,
            "reason": "decode: why"}  # fmt: skip
    route = {"requests_per_s": 1.0, "errors_per_s": 0.0, "ttft_s": {"p50": 0.1, "p99": 0.2},
             "itl_s": {"p50": 0.01, "p99": 0.02}}  # fmt: skip
    names = ["local", "disaggregated"][:routes]
    return {"url": "http://gw", "at": at, "window_s": at, "pools": {"decode": pool},
            "routes": {name: route for name in names}}  # fmt: skip


def test_busiest_prefers_both_routes_then_replicas_then_concurrency() -> None:
    reports = [
        {**_report(0.0, 9, 9, 99, 2), "window_s": 0},  # no window yet: never pictured
        _report(1.0, 8, 0, 50, 1),
        _report(2.0, 2, 1, 10, 2),
        _report(3.0, 2, 1, 12, 2),
    ]
    assert busiest(reports)["at"] == 3.0


def test_draw_writes_a_png_of_the_tables(tmp_path: Path) -> None:
    png = tmp_path / "status.png"
    draw(_report(1.0, 2, 1, 12, 2), png, width=100)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
