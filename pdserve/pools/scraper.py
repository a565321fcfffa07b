"""Probing workers: /health for readiness and /metrics for the scraped vLLM gauges."""

from __future__ import annotations

import asyncio

import httpx

from pdserve.pools.replica import Replica, parse_worker_metrics

PROBE_TIMEOUT_S = 2.0


async def probe(client: httpx.AsyncClient, replica: Replica) -> bool:
    """One /health probe, then /metrics if healthy; updates the replica's observations."""
    try:
        health = await client.get(f"{replica.url}/health", timeout=PROBE_TIMEOUT_S)
        ok = health.status_code == 200
    except httpx.HTTPError:
        ok = False
    replica.observe_health(ok)
    if ok:
        try:
            metrics = await client.get(f"{replica.url}/metrics", timeout=PROBE_TIMEOUT_S)
            if metrics.status_code == 200:
                replica.observe_metrics(parse_worker_metrics(metrics.text))
        except httpx.HTTPError:
            pass
    return ok


async def probe_all(client: httpx.AsyncClient, replicas: list[Replica]) -> None:
    await asyncio.gather(*(probe(client, r) for r in replicas if r.alive))
