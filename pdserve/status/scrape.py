"""A gateway's /metrics text as numbers, and what two scrapes say about the time between them.

Pure: a scrape is parsed once (`parse`), then histograms and counters are read out of it summed
over every label but the ones asked for, and two of them give a window's rate or quantile
(`rate`, `quantile` of `bucket_delta`), the arithmetic Prometheus' `rate()` and
`histogram_quantile()` do, so the live view and the Grafana dashboard agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Group = tuple[str, ...]  # the values of the labels a reading is grouped by
Buckets = dict[float, float]  # upper bound (le) -> cumulative count


@dataclass(frozen=True)
class Scrape:
    """Every sample of one /metrics read, by sample name (`x_bucket`, `x_total`, ...), at `at`
    seconds on the reader's clock."""

    at: float
    samples: Mapping[str, tuple[tuple[Labels, float], ...]]

    def total(self, name: str, by: tuple[str, ...] = ()) -> dict[Group, float]:
        """The sample `name` summed per value of the labels `by` (a counter's `x_total`)."""
        sums: dict[Group, float] = {}
        for labels, value in self.samples.get(name, ()):
            key = _group(labels, by)
            sums[key] = sums.get(key, 0.0) + value
        return sums

    def buckets(self, histogram: str, by: tuple[str, ...] = ()) -> dict[Group, Buckets]:
        """A histogram's cumulative buckets per value of the labels `by`."""
        out: dict[Group, Buckets] = {}
        for labels, value in self.samples.get(f"{histogram}_bucket", ()):
            le = float(dict(labels)["le"])
            group = out.setdefault(_group(labels, by), {})
            group[le] = group.get(le, 0.0) + value
        return out


def parse(text: str, at: float) -> Scrape:
    """The samples of a Prometheus text exposition."""
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, []).append((labels, float(sample.value)))
    return Scrape(at, {name: tuple(values) for name, values in samples.items()})


def _group(labels: Labels, by: tuple[str, ...]) -> Group:
    found = dict(labels)
    return tuple(found.get(name, "") for name in by)


def rate(
    new: Mapping[Group, float], old: Mapping[Group, float], seconds: float
) -> dict[Group, float]:
    """Per-second increase of counters between two scrapes; a counter that went down was reset
    (a restarted gateway) and counts from zero, as Prometheus' `rate()` does."""
    if seconds <= 0:
        return {key: 0.0 for key in new}
    return {key: _increase(value, old.get(key, 0.0)) / seconds for key, value in new.items()}


def _increase(new: float, old: float) -> float:
    return new - old if new >= old else new


def bucket_delta(new: Buckets, old: Buckets) -> Buckets:
    """The observations that fell into each bucket between two scrapes (cumulative)."""
    if old and new.get(math.inf, 0.0) < old.get(math.inf, 0.0):
        return dict(new)  # reset
    return {le: count - old.get(le, 0.0) for le, count in new.items()}


def quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' `histogram_quantile`: the bucket where the rank q x count falls, linearly
    interpolated inside it (the first bucket starts at 0); a rank in +Inf is the highest finite
    bound. None when the window saw no observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = upper, count
    return lower
