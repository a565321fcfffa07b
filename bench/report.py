"""Writing results for machines and people: JSON, Markdown tables, PNG latency CDFs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.metrics import RequestResult, goodput, summarize, tokens_per_second


def summarize_run(
    results: Sequence[RequestResult], wall_s: float, slo_ttft: float | None, slo_itl: float | None
) -> dict[str, Any]:
    """Per request class and overall: counts, errors, TTFT / ITL / TPOT / e2e statistics,
    output tokens per second and goodput."""
    by_kind: dict[str, list[RequestResult]] = {}
    for result in results:
        by_kind.setdefault(result.kind, []).append(result)
    groups = {"all": list(results), **dict(sorted(by_kind.items()))}
    return {
        name: _summarize_group(group, wall_s, slo_ttft, slo_itl) for name, group in groups.items()
    }


def _summarize_group(
    group: Sequence[RequestResult], wall_s: float, slo_ttft: float | None, slo_itl: float | None
) -> dict[str, Any]:
    ok = [r for r in group if r.ok]
    return {
        "requests": len(group),
        "errors": len(group) - len(ok),
        "ttft_s": summarize([r.ttft for r in ok]),
        "itl_s": summarize([gap for r in ok for gap in r.itls]),
        "tpot_s": summarize([r.tpot for r in ok if not math.isnan(r.tpot)]),
        "e2e_s": summarize([r.e2e for r in ok]),
        "output_tokens_per_s": tokens_per_second(group, wall_s),
        "goodput_rps": goodput(group, wall_s, slo_ttft, slo_itl),
        "routes": _count(r.route or "-" for r in ok),
    }


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def fmt(value: float, digits: int = 3) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def run_markdown(summary: Mapping[str, Any], title: str) -> str:
    """A table of a `summarize_run` result, one row per request class, milliseconds."""
    headers = [
        "class",
        "n",
        "err",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "ITL p99.9",
        "ITL max",
        "TPOT p50",
        "tok/s",
        "goodput/s",
    ]
    rows = []
    for name, s in summary.items():
        ms = 1000.0
        rows.append(
            [
                name,
                s["requests"],
                s["errors"],
                s["ttft_s"]["p50"] * ms,
                s["ttft_s"]["p99"] * ms,
                s["itl_s"]["p50"] * ms,
                s["itl_s"]["p99"] * ms,
                s["itl_s"]["p99.9"] * ms,
                s["itl_s"]["max"] * ms,
                s["tpot_s"]["p50"] * ms,
                s["output_tokens_per_s"],
                s["goodput_rps"],
            ]
        )
    return f"### {title}\n\nLatencies in ms.\n\n" + markdown_table(headers, rows)


def write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cdf_plot(panels: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str) -> None:
    """One panel per metric (e.g. 'TTFT (s)'), one empirical CDF line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (label, series) in zip(axes[0], panels.items(), strict=True):
        for name, values in series.items():
            ordered = sorted(v for v in values if not math.isnan(v))
            if ordered:
                fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
                axis.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("fraction of samples")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def latency_panels(
    results: Sequence[RequestResult], prefix: str = ""
) -> dict[str, dict[str, list[float]]]:
    """TTFT and ITL samples by request class, for `cdf_plot`."""
    ttft: dict[str, list[float]] = {}
    itl: dict[str, list[float]] = {}
    for r in results:
        if r.ok:
            ttft.setdefault(prefix + r.kind, []).append(r.ttft)
            itl.setdefault(prefix + r.kind, []).extend(r.itls)
    return {"TTFT (s)": ttft, "inter-token latency (s)": itl}
