"""`python -m bench.sim compare|scale`: autoscaling policies and layouts on one trace, or the
simulator's own speed at 1,000 replicas and 1,000,000 requests."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import markdown_table, write_json
from bench.sim import scenarios
from bench.sim.engine import ColdStart, Scaler, SimConfig, SimResult, simulate
from bench.sim.results import peak_replicas, summarize
from bench.sim.scalers import HpaScaler, PdserveScaler, StaticScaler, qps_scaler
from bench.workload import Requests
from pdserve import hardware, profile
from pdserve.profile import Profile, Role

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
DISAGG = PROFILES / "sim-a100-l4.yaml"
UNIFIED = PROFILES / "sim-a100-unified.yaml"


def qps_targets(prof: Profile, model: hardware.ModelCost, requests: Requests) -> dict[str, float]:
    """Requests/s one replica of each pool carries at its pdserve target, for the QPS rule:
    the same steady-state capacity, measured in the signal a QPS rule sees."""
    prompt, output = requests.prompt_tokens, requests.output_tokens
    targets = {}
    for name, spec in prof.pools.items():
        acc = hardware.accelerator(spec.accelerator)
        if spec.role is Role.prefill:
            long = prompt[prompt >= prof.routing.prefill_threshold]
            mean_long = float(long.mean()) if len(long) else 1800.0
            rate = 1800 / hardware.prefill_step_seconds(acc, model, 1800)
            targets[name] = 0.7 * rate / mean_long
            continue
        batch = int(spec.scaling.target_concurrency)
        context = int(batch * (prompt.mean() + output.mean() / 2))
        step = hardware.decode_step_seconds(acc, model, batch, context)
        targets[name] = batch / (float(output.mean()) * step)
    return targets


def run_one(
    prof: Profile,
    model: hardware.ModelCost,
    requests: Requests,
    scaler: Scaler,
    args: argparse.Namespace,
    hold_at_capacity: int | None = None,
) -> tuple[SimResult, dict[str, Any], float]:
    config = SimConfig(
        prof,
        model,
        ColdStart(provision_s=args.provision_s),
        seed=args.seed,
        hold_at_capacity=hold_at_capacity,
    )
    started = time.perf_counter()
    result = simulate(config, requests, scaler)
    wall = time.perf_counter() - started
    return result, summarize(result, args.slo_ttft, args.slo_tpot), wall


def compare(args: argparse.Namespace) -> int:
    model = hardware.model_cost(args.model)
    requests = scenarios.build(args.scenario, args.rate, args.duration, args.seed, trace=args.trace)
    disagg, unified = profile.load(str(DISAGG)), profile.load(str(UNIFIED))
    rows: list[dict[str, Any]] = []
    timelines: dict[str, SimResult] = {}

    def record(
        layout: str, prof: Profile, scaler: Scaler, name: str, hold: int | None = None
    ) -> SimResult:
        result, summary, wall = run_one(prof, model, requests, scaler, args, hold)
        rows.append({"layout": layout, "policy": name, "sim_wall_s": wall, **summary})
        timelines[f"{layout} / {name}"] = result
        print(
            f"  {layout:<22} {name:<12} {wall:6.1f} s  SLO {summary['slo_attainment']:.3f}"
            f"  ${summary['cost_usd']:.2f}",
            flush=True,
        )
        return result

    print(f"{args.scenario}: {len(requests)} requests over {args.duration:g} s")
    reference = record("A100 prefill + L4", disagg, PdserveScaler(), "pdserve")
    record("A100 prefill + L4", disagg, HpaScaler(), "hpa-gpu-util")
    record("A100 prefill + L4", disagg, qps_scaler(qps_targets(disagg, model, requests)), "hpa-qps")
    record("A100 prefill + L4", disagg, StaticScaler(peak_replicas(reference)), "static-peak")
    cap = disagg.engine.max_num_seqs  # what-if: the gateway holds beyond a full batch
    record("A100 prefill + L4", disagg, PdserveScaler(), f"pdserve, hold@{cap}", cap)
    unified_ref = record("A100 aggregated", unified, PdserveScaler(), "pdserve")
    cap = unified.engine.max_num_seqs
    record("A100 aggregated", unified, PdserveScaler(), f"pdserve, hold@{cap}", cap)
    record("A100 aggregated", unified, StaticScaler(peak_replicas(unified_ref)), "static-peak")
    return _write(args, rows, timelines, requests)


def _table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "layout",
        "policy",
        "SLO met",
        "TTFT p99 s",
        "long TTFT p99 s",
        "ITL p99 ms",
        "TPOT p99 ms",
        "dropped",
        "GPU-h",
        "cost $",
        "$/1k good",
        "peak replicas",
    ]
    body = []
    for r in rows:
        good = r["slo_attainment"] * r["requests"]
        per_k = r["cost_usd"] / good * 1000 if good else float("nan")
        peaks = " + ".join(f"{v} {k}" for k, v in r["peak_replicas"].items())
        body.append(
            [
                r["layout"],
                r["policy"],
                f"{r['slo_attainment']:.3f}",
                r["ttft_p99_s"],
                r["long_ttft_p99_s"],
                r["itl_p99_s"] * 1000,
                r["tpot_p99_s"] * 1000,
                r["dropped"],
                r["gpu_hours"],
                f"{r['cost_usd']:.2f}",
                per_k,
                peaks,
            ]
        )
    return markdown_table(headers, body)


def _write(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    timelines: dict[str, SimResult],
    requests: Requests,
) -> int:
    out = Path(args.out)
    span = float(requests.arrival[-1]) if len(requests) else 0.0
    title = (
        f"{args.scenario}, {len(requests)} requests over {span:.0f} s, "
        f"model {args.model}, SLO TTFT <= {args.slo_ttft:g} s and TPOT <= "
        f"{args.slo_tpot * 1000:g} ms, cold start {args.provision_s:g} s + image + weights"
    )
    table = f"### {title}\n\n" + _table(rows)
    params = {k: v for k, v in vars(args).items() if k != "handler"}
    write_json({"args": params, "rows": rows}, out / f"sim_{args.scenario}.json")
    (out / f"sim_{args.scenario}.md").write_text(table)
    _plot(timelines, requests, out / f"sim_{args.scenario}_replicas.png", title)
    print(table)
    print(f"wrote {out}/sim_{args.scenario}.json, .md, _replicas.png")
    return 0


def _plot(timelines: dict[str, SimResult], requests: Requests, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axis, axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    counts, edges = np.histogram(requests.arrival, bins=max(1, int(requests.arrival.max() // 10)))
    rate_axis.step(edges[:-1], counts / np.diff(edges), where="post")
    rate_axis.set_ylabel("arrivals / s")
    for label, result in timelines.items():
        rows = [(t, ready + starting) for t, _, ready, starting, _ in result.timeline.rows]
        times = sorted({t for t, _ in rows})
        totals: dict[float, int] = {}
        for t, n in rows:
            totals[t] = totals.get(t, 0) + n
        axis.step(times, [totals[t] for t in times], where="post", label=label)
    axis.set_xlabel("time (s)")
    axis.set_ylabel("replicas (all pools)")
    axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def scale(args: argparse.Namespace) -> int:
    """1,000 replicas (200 A100 prefill + 800 L4 decode) serving `--requests` requests."""
    model = hardware.model_cost(args.model)
    base = profile.load(str(DISAGG))
    pools = {
        "prefill": base.pools["prefill"].model_copy(
            update={"replicas": profile.Replicas(min=200, max=400, initial=200)}
        ),
        "decode": base.pools["decode"].model_copy(
            update={"replicas": profile.Replicas(min=800, max=1600, initial=800)}
        ),
    }
    prof = base.model_copy(update={"pools": pools})
    duration = args.requests / args.rate
    started = time.perf_counter()
    requests = scenarios.build("steady", args.rate, duration, args.seed)
    generated = time.perf_counter() - started
    cpu_started = time.process_time()
    result, summary, wall = run_one(prof, model, requests, PdserveScaler(), args)
    cpu = time.process_time() - cpu_started
    rows: list[list[Any]] = [
        ["requests", len(requests)],
        ["replicas at start", 1000],
        ["simulated seconds", f"{summary['horizon_s']:.0f}"],
        ["workload generation s", f"{generated:.2f}"],
        ["simulation wall s", f"{wall:.1f}"],
        ["simulation CPU s", f"{cpu:.1f}"],
        ["requests / wall s", f"{len(requests) / wall:,.0f}"],
        ["finished / dropped", f"{summary['finished']} / {summary['dropped']}"],
        ["SLO attainment", f"{summary['slo_attainment']:.3f}"],
        ["peak replicas", str(summary["peak_replicas"])],
    ]
    table = markdown_table(["", "value"], rows)
    print(table)
    out = Path(args.out)
    params = {k: v for k, v in vars(args).items() if k != "handler"}
    write_json(
        {"args": params, "summary": summary, "wall_s": wall, "cpu_s": cpu}, out / "sim_scale.json"
    )
    (out / "sim_scale.md").write_text(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="autoscaling policies and layouts on one trace")
    cmp.add_argument("--scenario", choices=scenarios.SCENARIOS, default="burst")
    cmp.add_argument("--rate", type=float, default=5.0, help="base requests/s")
    cmp.add_argument("--duration", type=float, default=3600.0, help="seconds of traffic")
    cmp.add_argument("--trace", help="CSV trace (scenario trace)")
    cmp.add_argument("--quick", action="store_true", help="a 1,200 s run")
    cmp.set_defaults(handler=compare)
    big = sub.add_parser("scale", help="the simulator's speed at 1,000 replicas")
    big.add_argument("--requests", type=int, default=1_000_000)
    big.add_argument("--rate", type=float, default=2000.0)
    big.add_argument("--quick", action="store_true", help="100,000 requests")
    big.set_defaults(handler=scale)
    for command in (cmp, big):
        command.add_argument("--model", default="llama-3.1-8b", choices=sorted(hardware.MODELS))
        command.add_argument("--slo-ttft", type=float, default=2.0, help="seconds")
        command.add_argument("--slo-tpot", type=float, default=0.15, help="seconds per token")
        command.add_argument(
            "--provision-s",
            type=float,
            default=60.0,
            help="cold start: node provisioning (image and weights added)",
        )
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--out", default="bench/results/sim")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick and args.command == "compare":
        args.duration = min(args.duration, 1200.0)
    if args.quick and args.command == "scale":
        args.requests = min(args.requests, 100_000)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
