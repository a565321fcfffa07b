"""bench/kv_transfer.py's raw NIXL part moves real bytes between two processes (no timing
asserted: speed is reported by the bench, never checked in tests)."""

from __future__ import annotations

import pytest

from bench.kv_transfer import MiB, RawResult, run_raw

pytestmark = pytest.mark.integration


def test_raw_nixl_read_lands_and_reports_every_size() -> None:
    # run_raw raises if the last byte of a READ is not the source's value.
    results = run_raw([MiB, 4 * MiB], iterations=1, device="cpu", cores=[])
    assert [row.size_bytes for row in results] == [MiB, 4 * MiB]
    assert all(row.nixl_s > 0 and row.memcpy_s > 0 for row in results)


def test_ratio_is_memcpy_time_over_nixl_time() -> None:
    row = RawResult(size_bytes=64 * MiB, nixl_s=0.02, memcpy_s=0.015)
    assert row.ratio == pytest.approx(0.75)  # 0.015 / 0.02
    assert row.nixl_gbps == pytest.approx(64 * MiB / 0.02 / 1e9)


@pytest.mark.gpu
def test_raw_nixl_read_vram_to_vram() -> None:
    results = run_raw([MiB, 64 * MiB], iterations=2, device="cuda", cores=[])
    assert [row.size_bytes for row in results] == [MiB, 64 * MiB]
