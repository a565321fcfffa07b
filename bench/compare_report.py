"""The comparison's numbers and report: per-phase metrics from a load run, the ratio table,
and the JSON, Markdown and CDF plot written at the end."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.compare_plans import Plan
from bench.load import LoadRun
from bench.metrics import goodput, percentile, ratio, tokens_per_second
from bench.report import cdf_plot, latency_panels, markdown_table, write_json


def phase_metrics(run: LoadRun, plan: Plan) -> dict[str, Any]:
    chat = [r for r in run.results if r.kind == "chat" and r.ok]
    long = [r for r in run.results if r.kind == "long" and r.ok]
    scale = plan.time_scale  # report modelled time: wall-clock x the time scale
    itls = [gap * scale for r in chat for gap in r.itls]
    long_ttfts = [r.ttft * scale for r in long]
    errors = [r.error for r in run.results if not r.ok]
    routes: dict[str, int] = {}
    for r in long:
        routes[r.route or "-"] = routes.get(r.route or "-", 0) + 1
    return {
        "chat_itl_p50_s": percentile(itls, 50),
        "chat_itl_p99_s": percentile(itls, 99),
        "chat_itl_p99.9_s": percentile(itls, 99.9),
        "chat_itl_max_s": max(itls) if itls else math.nan,
        "long_ttft_p50_s": percentile(long_ttfts, 50),
        "long_ttft_p99_s": percentile(long_ttfts, 99),
        "chat_tokens_per_s": tokens_per_second(chat, run.wall_s * scale),
        "goodput_rps": goodput(
            run.results, run.wall_s * scale, plan.slo_ttft / scale, plan.slo_itl / scale
        ),
        "chat_requests": len(chat),
        "long_requests": len(long),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "long_routes": routes,
        "wall_s": run.wall_s,
    }


RATIO_ROWS = [
    ("chat ITL p50", "chat_itl_p50_s"),
    ("chat ITL p99", "chat_itl_p99_s"),
    ("chat ITL p99.9", "chat_itl_p99.9_s"),
    ("chat ITL max", "chat_itl_max_s"),
    ("long-prompt TTFT p50", "long_ttft_p50_s"),
    ("long-prompt TTFT p99", "long_ttft_p99_s"),
    ("chat tokens/s", "chat_tokens_per_s"),
    ("goodput (req/s)", "goodput_rps"),
]


def ratio_table(results: dict[str, dict[str, Any]], intervals: tuple) -> str:
    """Metric rows; per rate the standard and disaggregated values and their ratio, and at the
    heavier rate the always-disaggregate proxy's value and ratio."""
    light, heavy = (f"every {s:g} s" for s in intervals)
    headers = ["metric"]
    for rate in (light, heavy):
        headers += [f"{rate}: standard", "disagg", "disagg/std"]
    headers += [f"{heavy}: always-disagg", "always/std"]
    rows = []
    for label, key in RATIO_ROWS:
        row: list[Any] = [label]
        for rate in (light, heavy):
            std, dis = results[f"standard {rate}"][key], results[f"disaggregated {rate}"][key]
            row += [std, dis, f"{ratio(dis, std):.2f}"]
        always = results.get(f"always-disaggregated {heavy}", {}).get(key, math.nan)
        row += [always, f"{ratio(always, results[f'standard {heavy}'][key]):.2f}"]
        rows.append(row)
    return markdown_table(headers, rows)


def progress(key: str, m: dict[str, Any]) -> None:
    print(
        f"  {key}: chat ITL p99 {m['chat_itl_p99_s'] * 1000:.0f} ms, long TTFT p50 "
        f"{m['long_ttft_p50_s']:.2f} s, chat {m['chat_tokens_per_s']:.1f} tok/s, "
        f"errors {m['errors']} {m['first_error'] or ''}, routes {m['long_routes']}",
        flush=True,
    )


def write_report(
    args: argparse.Namespace,
    plan: Plan,
    phase_s: float,
    results: dict[str, dict[str, Any]],
    runs: dict[str, LoadRun],
    timing: tuple[tuple, float, float],
) -> int:
    """Writes compare_<engine>.json, .md and _cdf.png under `args.out`, prints the table;
    returns 0 when no request of any phase failed, else 1."""
    out = Path(args.out)
    intervals, prefill_s, total_s = timing
    title = _title(args.engine, plan, phase_s, timing)
    table = f"### {title}\n\n" + ratio_table(results, intervals)
    write_json(
        {
            "args": {k: v for k, v in vars(args).items() if k != "handler"},
            "plan": asdict(plan),
            "phase_s": phase_s,
            "intervals_s": list(intervals),
            "long_prefill_s": prefill_s,
            "total_s": total_s,
            "results": results,
        },
        out / f"compare_{args.engine}.json",
    )
    (out / f"compare_{args.engine}.md").write_text(table)
    cdf_plot(_panels(runs), out / f"compare_{args.engine}_cdf.png", title[:120])
    print(table)
    print(f"wrote {out}/compare_{args.engine}.json, .md, _cdf.png")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


def _title(engine: str, plan: Plan, phase_s: float, timing: tuple[tuple, float, float]) -> str:
    intervals, prefill_s, total_s = timing
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"compare_profiles --engine {engine}, {stamp}: {plan.chat_streams} chat streams"
        f" + a {plan.long_prompt_tokens}-token prompt every {intervals[0]:g} s / "
        f"{intervals[1]:g} s (its prefill alone: {prefill_s:.2f} s), {phase_s:g} s per phase, "
        f"total {total_s:.0f} s; "
        f"goodput SLO TTFT <= {plan.slo_ttft:g} s, TPOT <= {plan.slo_itl * 1000:g} ms; "
        f"latencies in seconds{_scale_note(plan)}"
    )


def _panels(runs: dict[str, LoadRun]) -> dict[str, dict[str, list[float]]]:
    """Per phase, the chat streams' inter-token latencies and the long prompts' TTFTs."""
    panels: dict[str, dict[str, list[float]]] = {
        "chat inter-token latency (s)": {},
        "long-prompt TTFT (s)": {},
    }
    for key, run in runs.items():
        both = latency_panels(run.results)
        panels["chat inter-token latency (s)"][key] = both["inter-token latency (s)"].get(
            "chat", []
        )
        panels["long-prompt TTFT (s)"][key] = both["TTFT (s)"].get("long", [])
    return panels


def _scale_note(plan: Plan) -> str:
    if plan.time_scale == 1.0:
        return ""
    return (
        f" (simulated workers ran at time scale {plan.time_scale:g}; numbers are converted"
        " back to modelled time)"
    )
