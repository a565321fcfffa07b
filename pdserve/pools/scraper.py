"""Probing workers: /health for readiness and /metrics for the scraped vLLM gauges."""

from __future__ import annotations

import asyncio
import json
from typing import Protocol

from pdserve.pools.replica import Replica, parse_worker_metrics

PROBE_TIMEOUT_S = 2.0


class ProbeClient(Protocol):
    """What the probes need of an HTTP client (the gateway's `Upstream`): a GET's status and
    body, or an OSError (ConnectionError) when the worker cannot answer in time."""

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]: ...


async def probe(client: ProbeClient, replica: Replica) -> bool:
    """One /health probe, then /metrics if healthy; updates the replica's observations."""
    ok = await probe_health(client, replica)
    if ok:
        await probe_metrics(client, replica)
    return ok


async def probe_health(client: ProbeClient, replica: Replica) -> bool:
    try:
        status, _ = await client.get(f"{replica.url}/health", PROBE_TIMEOUT_S)
        ok = status == 200
    except OSError:
        ok = False
    replica.observe_health(ok)
    return ok


async def probe_metrics(client: ProbeClient, replica: Replica) -> None:
    try:
        status, body = await client.get(f"{replica.url}/metrics", PROBE_TIMEOUT_S)
    except OSError:
        return
    if status == 200:
        text = body.decode("utf-8", "replace")
        replica.observe_metrics(parse_worker_metrics(text))
        replica.metrics_text = text  # its KV/prefix counters are read when the gateway's are


async def probe_all(client: ProbeClient, replicas: list[Replica]) -> None:
    await asyncio.gather(*(probe(client, r) for r in replicas if r.alive))


async def probe_adapters(client: ProbeClient, replica: Replica) -> frozenset[str] | None:
    """The LoRA adapters the worker holds, from its `/v1/models` (vLLM lists each loaded one
    with its base model as `parent`); None when it does not answer with a listing."""
    try:
        status, body = await client.get(f"{replica.url}/v1/models", PROBE_TIMEOUT_S)
    except OSError:
        return None
    if status != 200:
        return None
    return listed_adapters(body)


def listed_adapters(body: bytes) -> frozenset[str] | None:
    """The ids of a `/v1/models` body's entries that have a `parent`; None if it is no listing."""
    try:
        cards = json.loads(body)["data"]
        return frozenset(c["id"] for c in cards if c.get("parent"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
