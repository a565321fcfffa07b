"""`pdserve status`: a gateway's pools and routes, refreshed like `top`.

    pdserve status --url http://127.0.0.1:8000            # live, every 2 s, Ctrl-C to quit
    pdserve status --url ... --once --json                 # one report for scripts

`--once` reads the gateway twice, `--interval` apart, so its rates and quantiles cover that
interval; the live view covers the last minute (`pdserve.status.poll.WINDOW_S`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from pdserve.status.poll import History, StatusError, client_for, read_gateway, report_of

DEFAULT_INTERVAL_S = 2.0


def run_status(
    url: str,
    *,
    once: bool = False,
    as_json: bool = False,
    interval_s: float = DEFAULT_INTERVAL_S,
    admin_token: str | None = None,
) -> int:
    token = admin_token or os.environ.get("PDSERVE_ADMIN_TOKEN")
    try:
        with client_for(url, token) as client:
            if once:
                _print(one_report(client, url, interval_s), as_json)
            else:
                _live(client, url, interval_s, as_json)
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def one_report(client: Any, url: str, interval_s: float) -> dict[str, Any]:
    """Two reads `interval_s` apart; the report of the second against the first."""
    history = History()
    history.add(read_gateway(client).scrape)
    time.sleep(interval_s)
    return report_of(read_gateway(client), history, url)


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from rich.console import Console

    from pdserve.status.view import render

    Console().print(render(report))


def _live(client: Any, url: str, interval_s: float, as_json: bool) -> None:
    history = History()
    if as_json:  # one JSON document a line, for a pipe
        while True:
            print(json.dumps(report_of(read_gateway(client), history, url)), flush=True)
            time.sleep(interval_s)
    from rich.live import Live

    from pdserve.status.view import render

    # like top: the whole terminal, redrawn each read, given back on Ctrl-C
    with Live(auto_refresh=False, screen=sys.stdout.isatty()) as live:
        while True:
            live.update(render(report_of(read_gateway(client), history, url)), refresh=True)
            time.sleep(interval_s)
