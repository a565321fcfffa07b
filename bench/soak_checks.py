"""What the soak checks once its fault schedule is over: every worker's KV back to idle, the
gateway's request counters equal to the client's own counts, no process or port left behind,
and the gateway's memory over the run."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

KV_IDLE = 1e-9


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in a Prometheus text page."""
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def gateway_counts(metrics_text: str) -> dict[str, int]:
    """`pdserve_requests_total` as {"route status": count}, zero counts left out."""
    counts = {
        f"{labels.get('route')} {labels.get('status')}": int(value)
        for labels, value in samples(metrics_text, "pdserve_requests_total")
    }
    return {key: n for key, n in sorted(counts.items()) if n}


def client_counts(outcomes: Iterable[tuple[str, str]]) -> dict[str, int]:
    """What the gateway should have counted: (route, status) of every request the client sent."""
    return dict(sorted(Counter(f"{route} {status}" for route, status in outcomes).items()))


async def kv_usage(client: httpx.AsyncClient, pools: dict[str, Any]) -> dict[str, float]:
    """vllm:kv_cache_usage_perc of every replica in /admin/pools (-1: it did not answer)."""
    usage: dict[str, float] = {}
    for pool in pools.values():
        for endpoint in pool.get("endpoints", []):
            try:
                page = await client.get(f"{endpoint['url']}/metrics", timeout=5)
                values = samples(page.text, "vllm:kv_cache_usage_perc")
                usage[endpoint["id"]] = max((v for _, v in values), default=-1.0)
            except httpx.HTTPError:
                usage[endpoint["id"]] = -1.0
    return usage


async def wait_kv_idle(
    gateway: httpx.AsyncClient, workers: httpx.AsyncClient, timeout_s: float
) -> dict[str, Any]:
    """Poll until every replica reports zero KV usage. A replica that goes away (scaled down)
    before it read zero counts as not idle: its blocks were never seen free. The readings that
    changed, when, and how long it took."""
    start = time.monotonic()
    first: dict[str, float] = {}
    seen_idle: set[str] = set()
    trace: list[tuple[float, dict[str, float]]] = []
    while True:
        pools = (await gateway.get("/admin/pools")).json()
        usage = await kv_usage(workers, pools)
        waited = round(time.monotonic() - start, 2)
        if not trace or trace[-1][1] != usage:
            trace.append((waited, usage))
        for replica, value in usage.items():
            first.setdefault(replica, value)
            if 0 <= value <= KV_IDLE:
                seen_idle.add(replica)
        never_idle = sorted(set(first) - seen_idle)
        busy = [r for r, value in usage.items() if not 0 <= value <= KV_IDLE]
        if (not busy and not never_idle) or waited > timeout_s:
            idle = not busy and not never_idle
            return {"idle": idle, "seconds": waited, "never_idle": never_idle, "trace": trace}
        await asyncio.sleep(0.5)


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leaks(pids: Iterable[int], ports: Iterable[int]) -> dict[str, list[int]]:
    """The processes still running and the ports still accepting, of those seen during the run."""
    return {
        "processes": sorted(pid for pid in set(pids) if alive(pid)),
        "ports": sorted(port for port in set(ports) if accepts(port)),
    }


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


def rss_growth(series: list[tuple[float, int]]) -> dict[str, Any]:
    """The gateway's RSS: the median of the run's second quarter against its last quarter (the
    first quarter is warm-up: imports, pools, caches filling), and the median of each tenth of
    the run, so a reader tells growth that levels off from growth that goes on."""
    if len(series) < 8:
        return {"samples": len(series), "growth_bytes": None}
    values = [rss for _, rss in series]
    quarter = len(values) // 4
    early = sorted(values[quarter : 2 * quarter])[quarter // 2]
    late = sorted(values[-quarter:])[quarter // 2]
    return {
        "samples": len(values),
        "first_bytes": values[0],
        "second_quarter_median_bytes": early,
        "last_quarter_median_bytes": late,
        "max_bytes": max(values),
        "growth_bytes": late - early,
        "growth_fraction": round((late - early) / early, 4) if early else None,
        "tenth_medians_bytes": tenth_medians(values),
    }


def tenth_medians(values: list[int]) -> list[int]:
    """The median of each tenth of `values`, in order (fewer parts for fewer than ten)."""
    parts = min(10, len(values))
    bounds = [round(i * len(values) / parts) for i in range(parts + 1)]
    return [sorted(values[a:b])[(b - a) // 2] for a, b in itertools.pairwise(bounds)]
