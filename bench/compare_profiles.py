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
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import workload
from bench.compare_plans import PLANS as PLANS
from bench.compare_plans import PROFILES, Plan
from bench.compare_report import phase_metrics, progress, write_report
from bench.compare_report import ratio_table as ratio_table
from bench.load import Limits, LoadRun, Target, run_load
from bench.warmup import fit_to_prefill, phase_intervals, request_timeout, warm_up
from pdserve.gateway.admin_client import switch_profile
from pdserve.stack import stack

LOCK = "/tmp/pdserve-vllm.lock"


@contextlib.contextmanager
def vllm_lock(engine: str) -> Iterator[None]:
    """Hold the shared lock for real vLLM; simulated workers need none."""
    if engine == "sim":
        yield
        return
    with open(LOCK, "w") as handle:
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    target = Target(url=url, model=model, first_seq=phase * 1_000_000, tokenizer=plan.tokenizer())
    limits = Limits(duration_s=phase_s, max_requests=100_000, drain_s=drain_s)
    # a time scale below 1 slows simulated workers down so the client keeps up with their tokens
    requests = long_prompts(plan, interval_s / plan.time_scale, phase_s)
    return asyncio.run(
        run_load(target, limits, requests, {"chat": plan.chat_streams}, show_progress=False)
    )


@dataclass
class Sizing:
    """The phases' workload: set from the first stack's warm-up, then the same for both."""

    phase_s: float
    drain_s: float
    intervals: tuple = ()
    prefill_s: float = math.nan

    def fit(self, plan: Plan, prefill_s: float, given: tuple[float, float] | None) -> None:
        self.prefill_s = prefill_s
        self.intervals = phase_intervals(plan, prefill_s, given)
        self.phase_s, self.drain_s = fit_to_prefill(
            self.phase_s, self.drain_s, self.intervals, prefill_s
        )
        print(
            f"  a {plan.long_prompt_tokens}-token prefill takes {prefill_s:.2f} s: "
            f"long prompts every {self.intervals[0]:g} s, then every {self.intervals[1]:g} s",
            flush=True,
        )


def compare(args: argparse.Namespace) -> int:
    plan = PLANS[args.engine]
    sizing = Sizing(
        phase_s=args.phase_s or (plan.quick_phase_s if args.quick else plan.phase_s),
        drain_s=30.0 if args.quick else 120.0,
    )
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, LoadRun] = {}
    with vllm_lock(args.engine):
        started = time.monotonic()  # the wait for the lock is not the benchmark's time
        for setup in ("standard", "disaggregated"):
            _compare_on(args, plan, setup, sizing, (runs, results))
    timing = (sizing.intervals, sizing.prefill_s, time.monotonic() - started)
    return write_report(args, plan, sizing.phase_s, results, runs, timing)


def _compare_on(
    args: argparse.Namespace,
    plan: Plan,
    setup: str,
    sizing: Sizing,
    into: tuple[dict[str, LoadRun], dict[str, dict[str, Any]]],
) -> None:
    """One stack (`setup`: standard or disaggregated) up, warmed, and its phases run; the first
    stack's warm-up sizes the workload of both."""
    runs, results = into
    path = PROFILES / f"{getattr(plan, setup)}.yaml"
    model = yaml.safe_load(path.read_text())["model"]["name"]
    begun = time.monotonic()
    ready_s = plan.ready_timeout_s
    with stack(path, log_dir=Path(args.out), port=args.port, ready_timeout_s=ready_s) as running:
        url = running.base_url
        print(f"  {path.stem} ready in {time.monotonic() - begun:.0f} s", flush=True)
        measured = warm_up(url, model, plan, request_timeout(path))
        if not sizing.intervals:
            sizing.fit(plan, measured, args.intervals)
        phases = [(setup, s) for s in sizing.intervals]
        if setup == "disaggregated":
            phases.append(("always-disaggregated", sizing.intervals[1]))
        for phase, (name, interval) in enumerate(phases, start=1):
            always = str(PROFILES / f"{plan.always}.yaml")
            if name == "always-disaggregated" and switch_profile(always, url, wait_s=120):
                raise RuntimeError(f"the switch to {plan.always} failed")
            key = f"{name} every {interval:g} s"
            drain_s = sizing.drain_s
            runs[key] = run_phase(url, model, plan, interval, sizing.phase_s, drain_s, phase)
            results[key] = phase_metrics(runs[key], plan)
            progress(key, results[key])


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
        "--port", type=int, default=None, help="the gateway's port (default: a free one)"
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
