"""Per-pool KV transfer and prefix cache metrics, from the counters the gateway scrapes off vLLM.

Each replica's last /metrics body is read for them (`pools.worker_counters`) when the gateway's
/metrics is, not at every probe, and what changed since the previous gateway scrape is added to
its pool's totals, so a pool's counters only grow: a replica that restarts counts from zero
again, one that leaves keeps what it added. (What a leaving replica
did after the last scrape of the gateway's /metrics is not seen; a drained replica is idle by
then.) The NIXL histograms keep vLLM's buckets.
"""

from __future__ import annotations

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from pdserve.pools.views import PoolView
from pdserve.pools.worker_counters import Histogram, WorkerCounters, parse_worker_counters

XFER_SECONDS = "pdserve_pool_kv_transfer_seconds"
XFER_BYTES = "pdserve_pool_kv_transfer_bytes"
XFER_FAILED = "pdserve_pool_kv_transfer_failures"
PREFIX_QUERIES = "pdserve_pool_prefix_cache_queries"
PREFIX_HITS = "pdserve_pool_prefix_cache_hits"
PREFIX_RATIO = "pdserve_pool_prefix_cache_hit_ratio"


class WorkerCounterTotals:
    """Each pool's totals, brought up to date from the pool views of a scrape."""

    def __init__(self) -> None:
        # (pool, replica) -> the body last read and its totals
        self._last: dict[tuple[str, str], tuple[str, WorkerCounters]] = {}
        self._pools: dict[str, WorkerCounters] = {}  # pool -> what its replicas added

    def collect(self, pools: list[PoolView]) -> list[Metric]:
        self._update(pools)
        return _families(self._pools)

    def _update(self, pools: list[PoolView]) -> None:
        seen: set[tuple[str, str]] = set()
        for pool in pools:
            totals = self._pools.setdefault(pool.name, WorkerCounters())
            for endpoint in pool.endpoints:
                if endpoint.metrics_text is None:
                    continue
                key = (pool.name, endpoint.id)
                seen.add(key)
                text, before = self._last.get(key, (None, None))
                if endpoint.metrics_text is text:
                    continue  # not scraped again since
                counters = parse_worker_counters(endpoint.metrics_text)
                totals.add(counters if before is None else counters.minus(before))
                self._last[key] = (endpoint.metrics_text, counters)
        for key in [k for k in self._last if k not in seen]:
            del self._last[key]  # the replica left: its additions stay in the pool's totals
        names = {pool.name for pool in pools}
        for name in [n for n in self._pools if n not in names]:
            del self._pools[name]  # a pool a profile switch dropped leaves the scrape


def _families(pools: dict[str, WorkerCounters]) -> list[Metric]:
    seconds = HistogramMetricFamily(
        XFER_SECONDS,
        "KV transfer time per NIXL transfer (vLLM's nixl_xfer_time_seconds)",
        None,
        None,
        ["pool"],
    )
    sizes = HistogramMetricFamily(
        XFER_BYTES,
        "Bytes per NIXL KV transfer (vLLM's nixl_bytes_transferred)",
        None,
        None,
        ["pool"],
    )
    failed = CounterMetricFamily(XFER_FAILED, "Failed NIXL KV transfers", labels=["pool"])
    queries = CounterMetricFamily(
        PREFIX_QUERIES, "Prompt tokens looked up in the prefix cache", labels=["pool"]
    )
    hits = CounterMetricFamily(
        PREFIX_HITS, "Prompt tokens found in the prefix cache", labels=["pool"]
    )
    ratio = GaugeMetricFamily(
        PREFIX_RATIO, "Prefix cache hits / queries since the gateway started", labels=["pool"]
    )
    for name, totals in pools.items():
        _add_histogram(seconds, name, totals.xfer_seconds)
        _add_histogram(sizes, name, totals.xfer_bytes)
        failed.add_metric([name], totals.failed_transfers)
        queries.add_metric([name], totals.prefix_queries)
        hits.add_metric([name], totals.prefix_hits)
        if totals.prefix_queries > 0:
            ratio.add_metric([name], totals.prefix_hits / totals.prefix_queries)
    return [seconds, sizes, failed, queries, hits, ratio]


def _add_histogram(family: HistogramMetricFamily, pool: str, hist: Histogram) -> None:
    if not hist.buckets:
        return  # no worker of the pool has exported the histogram yet
    buckets = [(floatToGoString(le), hist.buckets[le]) for le in sorted(hist.buckets)]
    family.add_metric([pool], buckets, hist.total)
