"""Demand held at the other gateways of one release (several gateways, one elected leader).

A request held for a pool at zero replicas, or prefilled elsewhere because the pool is cold,
counts toward the pool's demand only where it arrived; only the leader runs the autoscaler, so
a request held at a follower would never wake the pool. The leader therefore polls every peer
gateway's `GET /admin/demand` (that gateway's own held and diverted demand per pool, behind the
admin token) and adds the fresh reports to its snapshots. A report older than `stale_s` (the
peer is gone, restarting or unreachable) counts for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

if TYPE_CHECKING:
    from pdserve.pools.pool import Pool

log = logging.getLogger(__name__)

DEMAND_PATH = "/admin/demand"
STALE_S = 5.0  # a peer's report this old is ignored: it missed several polls


@dataclass(frozen=True)
class HeldDemand:
    """One gateway's demand for one pool that its replicas do not show yet."""

    queued_requests: int = 0  # held in the gateway's queue for the pool
    diverted_requests: int = 0  # served elsewhere (or held for that) while the pool is cold
    prompt_tokens: int = 0  # the prompt tokens of both

    def __add__(self, other: HeldDemand) -> HeldDemand:
        return HeldDemand(
            self.queued_requests + other.queued_requests,
            self.diverted_requests + other.diverted_requests,
            self.prompt_tokens + other.prompt_tokens,
        )

    @property
    def wanted(self) -> int:
        return self.queued_requests + self.diverted_requests


def local_demand(pools: Mapping[str, Pool]) -> dict[str, HeldDemand]:
    """This gateway's own held and diverted demand, per pool (what `/admin/demand` answers)."""
    return {
        name: HeldDemand(
            len(pool.queue), pool.diverted_requests, pool.queue.tokens + pool.diverted_tokens
        )
        for name, pool in pools.items()
    }


def parse_demand(payload: Any) -> dict[str, HeldDemand]:
    """A peer's `/admin/demand` body; ValueError when it is not one."""
    if not isinstance(payload, dict):
        raise ValueError("a demand report is a mapping of pools")
    parsed = {}
    for pool, fields in payload.items():
        if not isinstance(fields, dict):
            raise ValueError(f"pool {pool!r}: a mapping of counts")
        counts = [fields.get(k) for k in ("queued_requests", "diverted_requests", "prompt_tokens")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"pool {pool!r}: counts must be non-negative integers")
        parsed[str(pool)] = HeldDemand(*counts)  # type: ignore[arg-type]
    return parsed


class PeerDemand:
    """The latest report of each peer gateway, each with when it arrived (the caller's clock)."""

    def __init__(self, stale_s: float = STALE_S) -> None:
        self.stale_s = stale_s
        self._reports: dict[str, tuple[float, dict[str, HeldDemand]]] = {}

    def report(self, peer: str, demand: dict[str, HeldDemand], now: float) -> None:
        self._reports[peer] = (now, demand)

    def forget_except(self, peers: set[str]) -> None:
        """Peers no longer discovered (their pods are gone) are dropped at once."""
        self._reports = {p: r for p, r in self._reports.items() if p in peers}

    def total(self, pool: str, now: float) -> HeldDemand:
        """Every fresh peer report's demand for `pool`, summed."""
        total = HeldDemand()
        for at, demand in self._reports.values():
            if now - at <= self.stale_s:
                total = total + demand.get(pool, HeldDemand())
        return total


@runtime_checkable
class PeerGateways(Protocol):
    """The actuator's view of the other gateways of this release: their base URLs."""

    async def peer_gateways(self, port: int) -> list[str]: ...


@dataclass
class PeerPoller:
    """While the gateway leads: every `interval_s`, fetch each peer's demand into `board`, and
    signal `demand` when a peer holds requests, so a pool at zero wakes without waiting for
    its autoscaling interval."""

    source: PeerGateways
    board: PeerDemand
    demand: asyncio.Event
    port: Callable[[], int]
    admin_token: str | None
    interval_s: float
    clock: Callable[[], float] = time.monotonic

    async def run(self) -> None:
        headers = {"authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        async with httpx.AsyncClient(headers=headers, timeout=max(1.0, self.interval_s)) as client:
            while True:
                try:
                    await self.poll_once(client)
                except Exception:  # the loop must outlive one bad round
                    log.exception("polling peer gateways failed")
                await asyncio.sleep(self.interval_s)

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        peers = await self.source.peer_gateways(self.port())
        self.board.forget_except(set(peers))
        reports = await asyncio.gather(*(self._fetch(client, peer) for peer in peers))
        now = self.clock()
        for peer, report in zip(peers, reports, strict=True):
            if report is not None:
                self.board.report(peer, report, now)
                if any(d.wanted for d in report.values()):
                    self.demand.set()

    async def _fetch(self, client: httpx.AsyncClient, peer: str) -> dict[str, HeldDemand] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = await client.get(f"{peer}{DEMAND_PATH}")
            if answer.status_code == 200:
                return parse_demand(answer.json())
            log.warning("peer gateway %s: %s answered %d", peer, DEMAND_PATH, answer.status_code)
        return None
