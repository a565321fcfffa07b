"""vLLM's NIXL and prefix-cache counters read off a worker's /metrics (a real vLLM 0.32 CPU
server's, captured in tests/pools/data/), and the per-pool totals the gateway exports from them:
they only grow, through a worker restart and a replica that leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.gateway.metrics import GatewayMetrics
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.pools.views import PoolView, pool_view
from pdserve.pools.worker_counters import parse_worker_counters
from tests.support.gateway import gateway_profile

pytestmark = pytest.mark.unit

CAPTURED = (Path(__file__).parent / "data" / "vllm-0.32-cpu-metrics.txt").read_text()
ENGINE = 'engine="0",model_name="tiny"'


def _worker_text(transfers: int, seconds: float, nbytes: float, queries: int, hits: int) -> str:
    """The captured body with its NIXL and prefix-cache lines set to these totals (all the
    transfers in the 0.05 s bucket, so the lower buckets stay 0)."""
    lines = []
    for line in CAPTURED.splitlines():
        name = line.split("{")[0]
        if name == "vllm:nixl_xfer_time_seconds_bucket":
            le = float(line.split('le="')[1].split('"')[0])
            line = line.rsplit(" ", 1)[0] + f" {float(transfers if le >= 0.05 else 0)}"
        values = {
            "vllm:nixl_xfer_time_seconds_count": transfers,
            "vllm:nixl_xfer_time_seconds_sum": seconds,
            "vllm:nixl_bytes_transferred_count": transfers,
            "vllm:nixl_bytes_transferred_sum": nbytes,
            "vllm:prefix_cache_queries_total": queries,
            "vllm:prefix_cache_hits_total": hits,
        }
        if name in values:
            line = f"{name}{{{ENGINE}}} {float(values[name])}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_captured_vllm_body_parses() -> None:
    counters = parse_worker_counters(CAPTURED)
    assert counters.prefix_queries == 33.0 and counters.prefix_hits == 0.0
    assert counters.xfer_seconds.count == 0 and counters.failed_transfers == 0
    # vLLM's NIXL buckets, +Inf included
    assert sorted(counters.xfer_seconds.buckets)[:3] == [0.005, 0.01, 0.025]
    assert max(counters.xfer_seconds.buckets) == float("inf")
    assert len(counters.xfer_bytes.buckets) == 13


def test_two_engines_are_summed() -> None:
    one = 'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 3.0'
    two = 'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 4.0'
    assert parse_worker_counters(f"{one}\n{two}\n").prefix_hits == 7.0


class Pools:
    """One decode pool whose replicas' scraped counters a test sets."""

    def __init__(self) -> None:
        profile = gateway_profile("gw-disaggregated")
        self.pool = Pool("decode", profile.pools["decode"], "key", 8)

    def scraped(self, replica_id: str, text: str) -> None:
        replica = self.pool.replicas.setdefault(
            replica_id, Replica(ReplicaHandle(replica_id, "decode", f"http://{replica_id}"))
        )
        replica.metrics_text = text

    def pool_views(self, now: float) -> list[PoolView]:
        snapshot = PoolSnapshot("decode", now, 1, 0, 0, 0, 0, 0, 0, 0, 0.0)
        return [pool_view(self.pool, snapshot, True)]


def _value(metrics: GatewayMetrics, sample: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(sample, {"pool": "decode", **labels})
    return -1.0 if value is None else value


def test_pool_totals_only_grow_through_restarts_and_departures() -> None:
    pools, metrics = Pools(), GatewayMetrics()
    metrics.export_pools(pools, clock=lambda: 0.0)
    pools.scraped("d1", _worker_text(2, 0.08, 4096, 100, 40))
    pools.scraped("d2", _worker_text(1, 0.03, 1024, 50, 10))
    metrics.render()
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_count") == 3
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_sum") == pytest.approx(0.11)
    assert _value(metrics, "pdserve_pool_kv_transfer_bytes_sum") == 5120
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_bucket", le="0.05") == 3
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_bucket", le="0.025") == 0
    assert _value(metrics, "pdserve_pool_prefix_cache_hit_ratio") == pytest.approx(50 / 150)
    pools.scraped("d1", _worker_text(5, 0.2, 8192, 120, 50))  # d1: +3 transfers, +20 queries
    pools.scraped("d2", _worker_text(1, 0.01, 512, 5, 1))  # d2 restarted: all of it is new
    metrics.render()
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_count") == 3 + 3 + 1
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_sum") == pytest.approx(0.24)
    assert _value(metrics, "pdserve_pool_prefix_cache_queries_total") == 150 + 20 + 5
    assert _value(metrics, "pdserve_pool_prefix_cache_hits_total") == 50 + 10 + 1
    pools.pool.remove("d1")  # it left: what it added stays in the pool's totals
    metrics.render()
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_count") == 7
    pools.scraped("d1", _worker_text(1, 0.05, 100, 1, 0))  # a new d1 counts from zero
    metrics.render()
    assert _value(metrics, "pdserve_pool_kv_transfer_seconds_count") == 8
