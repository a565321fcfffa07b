"""Probing workers: /health for readiness and /metrics for the scraped vLLM gauges."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pdserve.pools.replica import Replica, parse_worker_metrics

PROBE_TIMEOUT_S = 2.0


class ProbeClient(Protocol):
    """What the probes need of an HTTP client (the gateway's `Upstream`): a GET's status and
    body, or an OSError (ConnectionError) when the worker cannot answer in time."""

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]: ...


async def probe(client: ProbeClient, replica: Replica) -> bool:
    """One /health probe, then /metrics if healthy; updates the replica's observations."""
    try:
        status, _ = await client.get(f"{replica.url}/health", PROBE_TIMEOUT_S)
        ok = status == 200
    except OSError:
        ok = False
    replica.observe_health(ok)
    if ok:
        try:
            status, body = await client.get(f"{replica.url}/metrics", PROBE_TIMEOUT_S)
        except OSError:
            return ok
        if status == 200:
            replica.observe_metrics(parse_worker_metrics(body.decode("utf-8", "replace")))
    return ok


async def probe_all(client: ProbeClient, replicas: list[Replica]) -> None:
    await asyncio.gather(*(probe(client, r) for r in replicas if r.alive))
