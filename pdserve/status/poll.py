"""Reading a gateway for `pdserve status`: GET /admin/pools and GET /metrics, kept for a window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from pdserve.status.report import build_report
from pdserve.status.scrape import Scrape, parse

WINDOW_S = 60.0


class StatusError(RuntimeError):
    """The gateway could not be read (down, wrong URL, admin token refused)."""


@dataclass(frozen=True)
class Reading:
    pools: dict[str, Any]
    scrape: Scrape


def read_gateway(client: httpx.Client, clock: Callable[[], float] = time.monotonic) -> Reading:
    """One read of the pools and the metrics."""
    try:
        pools = client.get("/admin/pools")
        metrics = client.get("/metrics")
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {client.base_url}: {exc}") from None
    for answer in (pools, metrics):
        if answer.status_code != 200:
            raise StatusError(f"{answer.request.url}: {answer.status_code} {answer.text[:200]}")
    try:
        return Reading(pools.json(), parse(metrics.text, clock()))
    except ValueError as exc:
        raise StatusError(f"{client.base_url} did not answer as a pdserve gateway: {exc}") from None


class History:
    """The scrapes of the last `window_s` seconds, plus the newest one older than that, so a
    window is as close to `window_s` as the polls allow."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._scrapes: deque[Scrape] = deque()

    def add(self, scrape: Scrape) -> Scrape | None:
        """Keep `scrape`; the baseline to compare it with (None for the first)."""
        self._scrapes.append(scrape)
        while len(self._scrapes) > 2 and self._scrapes[1].at <= scrape.at - self.window_s:
            self._scrapes.popleft()
        return self._scrapes[0] if len(self._scrapes) > 1 else None


def report_of(reading: Reading, history: History, url: str) -> dict[str, Any]:
    report = build_report(reading.pools, reading.scrape, history.add(reading.scrape))
    return {"url": url, "at": round(time.time(), 3), **report}


def client_for(url: str, admin_token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=10)
