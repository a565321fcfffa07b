"""Standard against disaggregated serving, side by side in one run, through `pdserve up`.

Real engine (default): two vLLM CPU workers serving the seeded `small` model, every process of
each bound to its own core: two unified workers (profile cpu-standard-small) against one prefill
and one decode worker (cpu-disaggregated-small). Workload per phase: 4 continuous chat streams
plus an 1,800-token prompt every 1.15x its prefill time (measured at warm-up: about 6.8 s on one
core here), then every 0.6x (where one prefill worker saturates). At the
heavier rate the disaggregated stack is switched live to an always-disaggregate proxy
(cpu-always-disaggregated-small: no route decision) for a third column. `--engine sim` runs the
same on simulated workers with A100 timing at larger pool sizes (sim-*.yaml).

    python -m bench.compare_profiles --quick          # under eight minutes, servers included
    python -m bench.compare_profiles --engine sim --quick

Real vLLM runs only while this holds /tmp/pdserve-vllm.lock (one benchmark or test at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench import workload
from bench.load import Limits, LoadRun, Target, run_load, send_one
from bench.metrics import goodput, percentile, ratio, tokens_per_second
from bench.report import cdf_plot, latency_panels, markdown_table, write_json

PROFILES = Path(__file__).resolve().parent / "profiles"
LOCK = "/tmp/pdserve-vllm.lock"


@dataclass(frozen=True)
class Plan:
    """One engine's comparison: profiles, workload shape and phase length."""

    standard: str
    disaggregated: str
    always: str
    chat_streams: int
    long_prompt_tokens: int
    long_output_tokens: int
    # seconds between long prompts (the rate, the heavier rate): fixed, or these multiples of
    # the long prompt's prefill time measured at warm-up on the first stack
    intervals: tuple[float, float] | None
    phase_s: float
    ready_timeout_s: float
    slo_ttft: float
    slo_itl: float
    quick_phase_s: float
    time_scale: float = 1.0  # simulated workers run this many times faster than modelled
    interval_factors: tuple[float, float] = (1.15, 0.6)


PLANS = {
    "vllm": Plan(
        "cpu-standard-small",
        "cpu-disaggregated-small",
        "cpu-always-disaggregated-small",
        chat_streams=4,
        long_prompt_tokens=1800,
        long_output_tokens=16,
        intervals=None,  # one prefill worker ~87% busy, then overloaded
        phase_s=120.0,
        quick_phase_s=30.0,
        ready_timeout_s=420.0,
        slo_ttft=8.0,
        slo_itl=0.2,
    ),
    "sim": Plan(
        "sim-standard",
        "sim-disaggregated",
        "sim-always-disaggregated",
        chat_streams=16,
        long_prompt_tokens=1800,
        long_output_tokens=16,
        intervals=(0.2, 0.08),
        phase_s=60.0,
        quick_phase_s=8.0,
        ready_timeout_s=60.0,
        slo_ttft=1.0,
        slo_itl=0.05,
        time_scale=0.2,
    ),
}


@contextlib.contextmanager
def vllm_lock(engine: str) -> Iterator[None]:
    """Hold the shared lock for real vLLM; simulated workers need none."""
    if engine != "vllm":
        yield
        return
    with open(LOCK, "w") as handle:
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def pdserve_up(profile_path: Path, port: int, log_path: Path, timeout_s: float) -> Iterator[str]:
    """`pdserve up` in its own process group; yields its URL once GET /ready is 200, and stops
    the whole group (gateway and workers) on the way out. Worker logs go beside its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not _port_free(port):
        raise RuntimeError(f"port {port} is in use: pass --port")
    command = [
        sys.executable,
        "-m",
        "pdserve.cli",
        "up",
        "--profile",
        str(profile_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "PDSERVE_LOG_DIR": str(log_path.with_suffix(".workers"))}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, process_group=0, env=env
        )
        try:
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            _wait_ready(process, url, profile_path.stem, timeout_s, log_path)
            print(f"  {profile_path.stem} ready in {time.monotonic() - started:.0f} s", flush=True)
            yield url
        finally:
            _stop(process)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(
    process: subprocess.Popen, url: str, name: str, timeout_s: float, log_path: Path
) -> None:
    """Until our gateway answers /ready with `name` active (not another server on the port)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"pdserve up exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                active = httpx.get(f"{url}/admin/profile", timeout=5).json()["active"]
                if active != name:
                    raise RuntimeError(f"port answered with profile {active!r}, not {name!r}")
                return
        time.sleep(1.0)
    raise RuntimeError(f"pdserve up not ready within {timeout_s:g} s; see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def switch_profile(url: str, profile_path: Path, timeout_s: float = 120.0) -> None:
    """Switch the running gateway live (PUT /admin/profile) and wait until it is active."""
    data = yaml.safe_load(profile_path.read_text())
    data.setdefault("name", profile_path.stem)
    answer = httpx.put(f"{url}/admin/profile", json={"profile": data}, timeout=30)
    if answer.status_code not in (200, 202):
        raise RuntimeError(f"profile switch refused: {answer.status_code} {answer.text[:300]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = httpx.get(f"{url}/admin/profile", timeout=10).json()
        if view["active"] == data["name"] and view["pending"] is None:
            return
        time.sleep(0.5)
    raise RuntimeError(f"profile {data['name']} not active within {timeout_s:g} s")


def long_prompts(plan: Plan, interval_s: float, duration_s: float) -> workload.Requests:
    arrival = workload.fixed_arrivals(interval_s, duration_s, offset_s=1.0)
    n = len(arrival)
    return workload.Requests(
        arrival,
        np.full(n, plan.long_prompt_tokens),
        np.full(n, plan.long_output_tokens),
        np.zeros(n, dtype=np.int64),
        ("long",),
    )


def run_phase(
    url: str, model: str, plan: Plan, interval_s: float, phase_s: float, drain_s: float, phase: int
) -> LoadRun:
    """One phase; its prompts are numbered from `phase` x 1,000,000, so that phases on one stack
    share no prompt (a later phase would hit the prefix cache) and both stacks get the same."""
    target = Target(url=url, model=model, first_seq=phase * 1_000_000)
    limits = Limits(duration_s=phase_s, max_requests=100_000, drain_s=drain_s)
    # a time scale below 1 slows simulated workers down so the client keeps up with their tokens
    requests = long_prompts(plan, interval_s / plan.time_scale, phase_s)
    return asyncio.run(
        run_load(target, limits, requests, {"chat": plan.chat_streams}, show_progress=False)
    )


def warm_up(url: str, model: str, plan: Plan, timeout_s: float) -> float:
    """Two long prompts and two chats, one after another: the first requests of a fresh stack
    pay one-time costs (NIXL handshakes, first-step allocations). Returns the second long
    prompt's TTFT on the idle stack (its prefill time), NaN if the stack was too slow."""
    target = Target(url=url, model=model)
    ttfts: list[float] = []

    async def requests() -> None:
        async with httpx.AsyncClient() as client:
            shapes = [("long", plan.long_prompt_tokens, 4), ("chat", 64, 8)] * 2
            for i, (kind, prompt, output) in enumerate(shapes):
                result = await send_one(client, target, kind, prompt, output, seq=10_000_000 + i)
                if kind == "long" and result.ok:
                    ttfts.append(result.ttft)

    with contextlib.suppress(TimeoutError):  # a stack too slow to warm up is measured as it is
        asyncio.run(asyncio.wait_for(requests(), timeout=timeout_s))
    return ttfts[-1] if len(ttfts) == 2 else math.nan


def phase_intervals(plan: Plan, prefill_s: float, given: tuple[float, float] | None) -> tuple:
    """The two long-prompt intervals: given on the command line, the plan's, or the plan's
    multiples of the measured prefill time (rounded to 0.1 s)."""
    if given is not None:
        return given
    if plan.intervals is not None:
        return plan.intervals
    if not math.isfinite(prefill_s):
        raise RuntimeError("the warm-up's long prompts failed: no prefill time to scale by")
    light, heavy = (round(prefill_s * factor, 1) for factor in plan.interval_factors)
    return (light, heavy)


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


def compare(args: argparse.Namespace) -> int:
    plan = PLANS[args.engine]
    phase_s = args.phase_s or (plan.quick_phase_s if args.quick else plan.phase_s)
    out = Path(args.out)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, LoadRun] = {}
    drain_s = 30.0 if args.quick else 120.0
    intervals: tuple = ()
    prefill_s = math.nan
    with vllm_lock(args.engine):
        started = time.monotonic()  # the wait for the lock is not the benchmark's time
        for setup in ("standard", "disaggregated"):
            path = PROFILES / f"{getattr(plan, setup)}.yaml"
            model = yaml.safe_load(path.read_text())["model"]["name"]
            port = args.port or int(yaml.safe_load(path.read_text())["gateway"]["port"])
            with pdserve_up(path, port, out / f"{path.stem}.log", plan.ready_timeout_s) as url:
                measured = warm_up(url, model, plan, timeout_s=drain_s * 2)
                if not intervals:  # the first stack sets the workload of both
                    prefill_s = measured
                    intervals = phase_intervals(plan, prefill_s, args.intervals)
                    print(
                        f"  a {plan.long_prompt_tokens}-token prefill takes {prefill_s:.2f} s: "
                        f"long prompts every {intervals[0]:g} s, then every {intervals[1]:g} s",
                        flush=True,
                    )
                phases = [(setup, s) for s in intervals]
                if setup == "disaggregated":
                    phases.append(("always-disaggregated", intervals[1]))
                for phase, (name, interval) in enumerate(phases, start=1):
                    if name == "always-disaggregated":
                        switch_profile(url, PROFILES / f"{plan.always}.yaml")
                    key = f"{name} every {interval:g} s"
                    runs[key] = run_phase(url, model, plan, interval, phase_s, drain_s, phase)
                    results[key] = phase_metrics(runs[key], plan)
                    _progress(key, results[key])
    timing = (intervals, prefill_s, time.monotonic() - started)
    return _report(args, plan, phase_s, results, runs, timing)


def _progress(key: str, m: dict[str, Any]) -> None:
    print(
        f"  {key}: chat ITL p99 {m['chat_itl_p99_s'] * 1000:.0f} ms, long TTFT p50 "
        f"{m['long_ttft_p50_s']:.2f} s, chat {m['chat_tokens_per_s']:.1f} tok/s, "
        f"errors {m['errors']} {m['first_error'] or ''}, routes {m['long_routes']}",
        flush=True,
    )


def _report(
    args: argparse.Namespace,
    plan: Plan,
    phase_s: float,
    results: dict[str, dict[str, Any]],
    runs: dict[str, LoadRun],
    timing: tuple[tuple, float, float],
) -> int:
    out = Path(args.out)
    intervals, prefill_s, total_s = timing
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    title = (
        f"compare_profiles --engine {args.engine}, {stamp}: {plan.chat_streams} chat streams"
        f" + a {plan.long_prompt_tokens}-token prompt every {intervals[0]:g} s / "
        f"{intervals[1]:g} s (its prefill alone: {prefill_s:.2f} s), {phase_s:g} s per phase, "
        f"total {total_s:.0f} s; "
        f"goodput SLO TTFT <= {plan.slo_ttft:g} s, TPOT <= {plan.slo_itl * 1000:g} ms; "
        f"latencies in seconds{_scale_note(plan)}"
    )
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
    cdf_plot(panels, out / f"compare_{args.engine}_cdf.png", title[:120])
    print(table)
    print(f"wrote {out}/compare_{args.engine}.json, .md, _cdf.png")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


def _scale_note(plan: Plan) -> str:
    if plan.time_scale == 1.0:
        return ""
    return (
        f" (simulated workers ran at time scale {plan.time_scale:g}; numbers are converted"
        " back to modelled time)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare_profiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--engine", choices=sorted(PLANS), default="vllm")
    parser.add_argument(
        "--quick", action="store_true", help="short phases (30 s, sim 8 s) and drains (30 s)"
    )
    parser.add_argument("--phase-s", type=float, default=None, help="seconds per phase")
    parser.add_argument(
        "--intervals",
        type=_two_floats,
        default=None,
        help="seconds between long prompts in the two phases, e.g. 8,5 (default for vLLM: "
        "1.15x and 0.6x the long prompt's prefill time measured at warm-up)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the gateway's port (default: the profile's)"
    )
    parser.add_argument("--out", default="bench/results/compare")
    return parser


def _two_floats(text: str) -> tuple[float, float]:
    light, heavy = (float(part) for part in text.split(","))
    return (light, heavy)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: pdserve up is stopped


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return compare(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
