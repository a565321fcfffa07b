"""The README's picture of `pdserve status`, made from a real run: `pdserve up` with the `sim`
profile (simulated A100 prefill / L4 decode workers, pools that scale), a burst of streamed
requests, and the live view's report read every `--interval` seconds. Writes the run's reports
(JSON), and the busiest moment drawn as `pdserve status` draws it (rich's SVG, then PNG with
cairosvg).

    python -m bench.status_picture --out docs/pdserve-status.png --json bench/runs/status_burst.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from pdserve.stack import stack
from pdserve.status.poll import History, client_for, read_gateway, report_of

ADMIN_TOKEN = "status-picture"
WORDS = ("the", "pool", "prefill", "decode", "cache", "token", "route", "queue", "scale", "kv")


def prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def one_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> int:
    async with client.stream("POST", "/v1/completions", json=body) as answer:
        async for _ in answer.aiter_lines():
            pass
        return answer.status_code


async def burst(base_url: str, streams: int, seconds: float, seed: int) -> dict[str, int]:
    """`streams` closed-loop clients for `seconds`: a third send long RAG-like prompts (~1,400
    tokens: the prefill hop), the rest short chats; every response streamed. Status codes
    counted."""
    rng = random.Random(seed)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def loop(index: int) -> None:
            while time.monotonic() < deadline:
                long = index % 3 == 0
                body = {"model": "tiny", "prompt": prompt(250 if long else 20, rng),
                        "max_tokens": 64 if long else 128, "stream": True}  # fmt: skip
                code = await one_stream(client, body)
                codes[str(code)] = codes.get(str(code), 0) + 1

        await asyncio.gather(*(loop(i) for i in range(streams)))
    return codes


def watch(base_url: str, interval_s: float, stop: threading.Event) -> list[dict[str, Any]]:
    """The live view's reports, one per interval, until `stop`."""
    reports: list[dict[str, Any]] = []
    history = History()
    with client_for(base_url, ADMIN_TOKEN) as client:
        while not stop.is_set():
            reports.append(report_of(read_gateway(client), history, base_url))
            stop.wait(interval_s)
    return reports


def busiest(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with both routes served in its window, then the most replicas up or coming,
    then the most requests in the gateway."""

    def load(report: dict[str, Any]) -> tuple[int, int, int]:
        pools = report["pools"].values()
        replicas = sum(p["replicas"]["ready"] + p["replicas"]["starting"] for p in pools)
        routes = sum(1 for r in report["routes"].values() if r["requests_per_s"])
        return routes, replicas, sum(p["concurrency"] for p in pools)

    return max((r for r in reports if r["window_s"] > 0), key=load)


def draw(report: dict[str, Any], png: Path, width: int) -> None:
    import cairosvg
    from rich.console import Console

    from pdserve.status.view import render

    console = Console(record=True, width=width, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render(report))
    # rich names Fira Code first; draw with the monospace font this machine has, so the
    # tables' box characters line up
    svg = console.export_svg(title="pdserve status").replace("Fira Code", "DejaVu Sans Mono")
    png.parent.mkdir(parents=True, exist_ok=True)
    cairosvg.svg2png(bytestring=svg.encode(), write_to=str(png))


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN_TOKEN, "PDSERVE_API_KEYS": ""}
    with stack(args.profile, env=env, ready_timeout_s=300) as running:
        stop = threading.Event()
        reports: list[dict[str, Any]] = []
        watcher = threading.Thread(
            target=lambda: reports.extend(watch(running.base_url, args.interval, stop))
        )
        watcher.start()
        time.sleep(args.interval * 2)  # a baseline before the burst
        started, load_before = time.time(), os.getloadavg()
        codes = asyncio.run(burst(running.base_url, args.streams, args.seconds, args.seed))
        load_after = os.getloadavg()
        time.sleep(args.tail)  # the pools scaling back
        stop.set()
        watcher.join()
    return {
        "command": "python -m bench.status_picture " + " ".join(args.argv),
        "profile": str(args.profile),
        "burst": {"streams": args.streams, "seconds": args.seconds, "started_at": started},
        "status_codes": codes,
        # the machine's 1/5/15-minute load averages around the burst, and its CPUs: the
        # latencies shown are this machine's at that load
        "load_average": {"before": load_before, "after": load_after, "cpus": os.cpu_count()},
        "reports": reports,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="sim")
    parser.add_argument("--streams", type=int, default=48, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="burst length")
    parser.add_argument("--tail", type=float, default=10.0, help="seconds read after it")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between reports")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=104, help="terminal columns drawn")
    parser.add_argument("--out", type=Path, default=Path("docs/pdserve-status.png"))
    parser.add_argument("--json", type=Path, default=Path("bench/runs/status_burst.json"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    run_record = run(args)
    chosen = busiest(run_record["reports"])
    run_record["pictured_at"] = chosen["at"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run_record, indent=1) + "\n")
    draw(chosen, args.out, args.width)
    print(f"wrote {args.json} ({len(run_record['reports'])} reports) and {args.out}")
    print(f"status codes: {run_record['status_codes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
