"""The live view's tables, drawn with rich from a report (`pdserve.status.report`)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

# replicas by state (ready, starting, draining, failed), then what the pool wants and carries
POOL_COLUMNS = ("pool", "role", "ready", "start", "drain", "fail", "desired", "queue", "conc",
                "queued tok", "tok/s")  # fmt: skip
ROUTE_COLUMNS = ("route", "req/s", "errors/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99")


def render(report: dict[str, Any]) -> Group:
    """The header line, the pools table, why each pool wants its size, the routes table."""
    pools = report["pools"]
    return Group(
        _header(report), pools_table(pools), _reasons(pools), routes_table(report["routes"])
    )


def _header(report: dict[str, Any]) -> Text:
    window = report.get("window_s") or 0.0
    over = f"last {window:.0f} s" if window > 0 else "waiting for a second scrape"
    return Text.assemble(("pdserve status ", "bold"), f"{report.get('url', '')}  ({over})")


def pools_table(pools: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="pools", title_justify="left", expand=False)
    for column in POOL_COLUMNS:
        table.add_column(column, justify="left" if column in ("pool", "role") else "right")
    for name, pool in pools.items():
        replicas = pool["replicas"]
        table.add_row(
            name if pool.get("in_profile", True) else f"{name} (leaving)",
            str(pool.get("role") or ""),
            *(str(replicas[state]) for state in ("ready", "starting", "draining", "failed")),
            _count(pool.get("desired")),
            _count(pool.get("queue")),
            _count(pool.get("concurrency")),
            _count(pool.get("queued_prompt_tokens")),
            _rate(pool.get("tokens_per_s")),
        )
    return table


def _reasons(pools: dict[str, dict[str, Any]]) -> Text:
    """The last scale decision's reason of each pool, one line each."""
    text = Text("why desired:\n", style="bold")
    for name, pool in pools.items():
        reason = pool.get("reason") or f"{name}: no scale decision yet"
        text.append(f"  {reason}\n")  # a reason names its pool first
    return text


def routes_table(routes: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="routes", title_justify="left", expand=False)
    for column in ROUTE_COLUMNS:
        table.add_column(column, justify="left" if column == "route" else "right")
    for name, route in routes.items():
        ttft, itl = route["ttft_s"], route["itl_s"]
        table.add_row(
            name,
            _rate(route.get("requests_per_s")),
            _rate(route.get("errors_per_s")),
            *(_ms(ttft[q]) for q in ("p50", "p99")),
            *(_ms(itl[q]) for q in ("p50", "p99")),
        )
    return table


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 10 else f"{seconds * 1000:.1f} ms"
