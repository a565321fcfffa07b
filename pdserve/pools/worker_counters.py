"""The cumulative vLLM counters the gateway re-exports per pool: NIXL KV transfers and prefix cache.

A worker's /metrics carries them as totals since it started (one label set per engine, summed
here). The gateway turns the differences between scrapes into per-pool counters
(`gateway.worker_metrics`), so a replica that leaves or restarts does not make a pool's total
go backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

XFER_TIME = "vllm:nixl_xfer_time_seconds"
XFER_BYTES = "vllm:nixl_bytes_transferred"
FAILED = "vllm:nixl_num_failed_transfers_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
CREATED = (XFER_TIME + "_created", "vllm:prefix_cache_queries_created")
PREFIXES = (XFER_TIME + "_", XFER_BYTES + "_", FAILED, PREFIX_QUERIES, PREFIX_HITS, CREATED[1])


@dataclass
class Histogram:
    """A cumulative Prometheus histogram: counts by upper bound (`le`), sum and count."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0
    count: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        """What happened since `earlier` (of the same worker process)."""
        return Histogram(
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def add(self, other: Histogram) -> None:
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n
        self.total += other.total
        self.count += other.count


@dataclass
class WorkerCounters:
    xfer_seconds: Histogram = field(default_factory=Histogram)
    xfer_bytes: Histogram = field(default_factory=Histogram)
    failed_transfers: float = 0.0
    prefix_queries: float = 0.0  # prompt tokens looked up in the prefix cache
    prefix_hits: float = 0.0  # of them, tokens found cached
    created: float = 0.0  # when the worker's counters started (their `_created` sample)

    def minus(self, earlier: WorkerCounters) -> WorkerCounters:
        """What happened since `earlier`: all of this when the worker restarted in between
        (its counters were created anew, or one of them went back)."""
        if self.created != earlier.created or self._went_back(earlier):
            return self
        return WorkerCounters(
            self.xfer_seconds.minus(earlier.xfer_seconds),
            self.xfer_bytes.minus(earlier.xfer_bytes),
            self.failed_transfers - earlier.failed_transfers,
            self.prefix_queries - earlier.prefix_queries,
            self.prefix_hits - earlier.prefix_hits,
            self.created,
        )

    def _went_back(self, earlier: WorkerCounters) -> bool:
        pairs = (
            (self.xfer_seconds.count, earlier.xfer_seconds.count),
            (self.xfer_bytes.count, earlier.xfer_bytes.count),
            (self.failed_transfers, earlier.failed_transfers),
            (self.prefix_queries, earlier.prefix_queries),
            (self.prefix_hits, earlier.prefix_hits),
        )
        return any(now < before for now, before in pairs)

    def add(self, other: WorkerCounters) -> None:
        self.xfer_seconds.add(other.xfer_seconds)
        self.xfer_bytes.add(other.xfer_bytes)
        self.failed_transfers += other.failed_transfers
        self.prefix_queries += other.prefix_queries
        self.prefix_hits += other.prefix_hits


def parse_worker_counters(text: str) -> WorkerCounters:
    """The counters from a worker's Prometheus text, summed over engines. Only their few lines
    are read, by hand: the histograms' other lines are most of a vLLM /metrics body."""
    counters = WorkerCounters()
    for line in text.splitlines():
        if not line.startswith(PREFIXES):
            continue
        name, _, rest = line.partition("{")
        labels, _, value_text = rest.rpartition("} ") if rest else ("", "", "")
        if not rest:
            name, _, value_text = line.partition(" ")
        try:
            value = float(value_text.split()[0])
        except (IndexError, ValueError):
            continue
        _add_sample(counters, name, labels, value)
    return counters


def _add_sample(counters: WorkerCounters, name: str, labels: str, value: float) -> None:
    if name in CREATED:
        counters.created = counters.created or value  # the first engine's
    elif name == FAILED:
        counters.failed_transfers += value
    elif name == PREFIX_QUERIES:
        counters.prefix_queries += value
    elif name == PREFIX_HITS:
        counters.prefix_hits += value
    else:
        for base, hist in ((XFER_TIME, counters.xfer_seconds), (XFER_BYTES, counters.xfer_bytes)):
            if name.startswith(base):
                _add_histogram_sample(hist, name[len(base) :], labels, value)


def _add_histogram_sample(hist: Histogram, suffix: str, labels: str, value: float) -> None:
    if suffix == "_sum":
        hist.total += value
    elif suffix == "_count":
        hist.count += value
    elif suffix == "_bucket":
        le = _label(labels, "le")
        if le is not None:
            bound = float(le)
            hist.buckets[bound] = hist.buckets.get(bound, 0.0) + value


def _label(labels: str, key: str) -> str | None:
    """One label's value from `a="x",le="0.5"` (vLLM's values hold no quotes)."""
    for pair in labels.split(","):
        name, _, value = pair.partition("=")
        if name.strip() == key:
            return value.strip().strip('"')
    return None
