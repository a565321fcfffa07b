"""`python -m bench.clustersim compare|scale`: autoscaling policies and layouts on one trace, or the
simulator's own speed at 1,000 replicas and 1,000,000 requests."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.clustersim import scenarios
from bench.clustersim.config import ColdStart, Scaler, SimConfig, SimResult
from bench.clustersim.events import simulate
from bench.clustersim.results import peak_replicas, summarize
from bench.clustersim.scalers import HpaScaler, PdserveScaler, StaticScaler, qps_scaler
from bench.report import markdown_table, write_json
from bench.workload import Requests
from pdserve import profile
from pdserve.profile import Profile, Role
from pdserve.workers.sim import roofline as hardware

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
    late_binding: bool = True,
) -> tuple[SimResult, dict[str, Any], float]:
    config = SimConfig(
        prof,
        model,
        ColdStart(provision_s=args.provision_s),
        seed=args.seed,
        late_binding=late_binding,
    )
    started = time.perf_counter()
    result = simulate(config, requests, scaler)
    wall = time.perf_counter() - started
    return result, summarize(result, args.slo_ttft, args.slo_tpot), wall


def with_levers(
    prof: Profile, headroom: dict[str, int] | None = None, deadline_s: float | None = None
) -> Profile:
    """The profile with pools' `scaling.headroom` and the gateway's `start_deadline_s` set."""
    pools = {
        name: spec.model_copy(
            update={"scaling": spec.scaling.model_copy(update={"headroom": headroom[name]})}
        )
        if headroom and name in headroom
        else spec
        for name, spec in prof.pools.items()
    }
    gateway = prof.gateway
    if deadline_s is not None:
        gateway = gateway.model_copy(update={"start_deadline_s": deadline_s})
    return prof.model_copy(update={"pools": pools, "gateway": gateway})


def _run_row(job: tuple) -> tuple[dict[str, Any], SimResult]:
    layout, name, prof, scaler, late_binding, args, requests = job
    model = hardware.model_cost(args.model)
    result, summary, wall = run_one(prof, model, requests, scaler, args, late_binding)
    print(
        f"  {layout:<18} {name:<34} {wall:6.1f} s  SLO {summary['slo_attainment']:.3f}"
        f"  ${summary['cost_usd']:.2f}",
        flush=True,
    )
    return {"layout": layout, "policy": name, "sim_wall_s": wall, **summary}, result


def compare(args: argparse.Namespace) -> int:
    model = hardware.model_cost(args.model)
    requests = scenarios.build(args.scenario, args.rate, args.duration, args.seed, trace=args.trace)
    disagg, unified = profile.load(str(DISAGG)), profile.load(str(UNIFIED))
    print(f"{args.scenario}: {len(requests)} requests over {args.duration:g} s")
    split, agg = "A100 prefill + L4", "A100 aggregated"
    first = [
        (split, "pdserve", disagg, PdserveScaler(), True),
        (agg, "pdserve", unified, PdserveScaler(), True),
    ]
    done = [_run_row((*job, args, requests)) for job in first]
    reference, unified_ref = (result for _, result in done)
    headroom = dict(zip(("prefill", "decode"), args.headroom, strict=True))
    room = "+".join(str(n) for n in args.headroom)
    deadline = args.deadline
    levers = with_levers(disagg, headroom, deadline)
    jobs = [
        (split, "hpa-gpu-util", disagg, HpaScaler(), True),
        (split, "hpa-qps", disagg, qps_scaler(qps_targets(disagg, model, requests)), True),
        (split, "static-peak", disagg, StaticScaler(peak_replicas(reference)), True),
        (split, "pdserve, gateway before issue 18", disagg, PdserveScaler(), False),
        (split, f"pdserve + headroom {room}", with_levers(disagg, headroom), PdserveScaler(), True),
        (
            split,
            f"pdserve + deadline {deadline:g} s",
            with_levers(disagg, None, deadline),
            PdserveScaler(),
            True,
        ),
        (split, "pdserve + headroom + deadline", levers, PdserveScaler(), True),
        (split, "  the same, no late binding", levers, PdserveScaler(), False),
        (agg, "pdserve, gateway before issue 18", unified, PdserveScaler(), False),
        (agg, "static-peak", unified, StaticScaler(peak_replicas(unified_ref)), True),
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        done += list(pool.map(_run_row, [(*job, args, requests) for job in jobs]))
    order = [0, *range(2, 6), *range(6, 10), 1, 10, 11]
    rows = [done[i][0] for i in order]
    timelines = {f"{done[i][0]['layout']} / {done[i][0]['policy']}": done[i][1] for i in (0, 1, 8)}
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
    prof = _thousand_replicas(profile.load(str(DISAGG)))
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


def _thousand_replicas(base: Profile) -> Profile:
    """`base` with 200 prefill and 800 decode replicas at start (room to double each)."""
    pools = {
        "prefill": base.pools["prefill"].model_copy(
            update={"replicas": profile.Replicas(min=200, max=400, initial=200)}
        ),
        "decode": base.pools["decode"].model_copy(
            update={"replicas": profile.Replicas(min=800, max=1600, initial=800)}
        ),
    }
    return base.model_copy(update={"pools": pools})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.clustersim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="autoscaling policies and layouts on one trace")
    cmp.add_argument("--scenario", choices=scenarios.SCENARIOS, default="burst")
    cmp.add_argument("--rate", type=float, default=5.0, help="base requests/s")
    cmp.add_argument("--duration", type=float, default=3600.0, help="seconds of traffic")
    cmp.add_argument("--trace", help="CSV trace (scenario trace)")
    cmp.add_argument("--quick", action="store_true", help="a 1,200 s run")
    cmp.add_argument(
        "--headroom",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(2, 8),
        help="the headroom lever's spare replicas: prefill,decode",
    )
    cmp.add_argument(
        "--deadline", type=float, default=2.0, help="the early-refusal lever's start deadline, s"
    )
    cmp.add_argument("--jobs", type=int, default=2, help="simulations run at once")
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
