"""A soak under faults: steady mixed load through `pdserve up` while a fault schedule kills,
restarts, hangs, slows and blocks workers and switches the profile live; then the checks.

    python -m bench.soak --quick --out bench/results/soak.json          # simulated workers, ~1 min
    flock /tmp/pdserve-vllm.lock python -m bench.soak --engine vllm --duration-s 240 \
        --out bench/runs/soak_vllm.json
    python -m bench.soak --duration-s 1800 --out bench/results/soak_30min.json  # the RSS soak

Load: `--concurrency` closed-loop clients cycle through short chat streams (local route) and long
prompts, streamed and not (the prefill hop), all greedy; each answer is compared, token for token,
with a reference `both` worker's (bench/soak_load.py). Faults: bench/soak_faults.py's schedule,
one every `--fault-interval-s`. Bounded: no request starts after `--duration-s` or beyond
`--max-requests`, each has `--request-timeout-s`, and every wait after the load is bounded.

Afterwards: the original profile is back, every worker's KV usage returns to idle, the
gateway's `pdserve_requests_total` equals the client's counts, the stack stops with no process
or port left (the harness's own rule and psutil over every pid and port seen during the run),
and the gateway's RSS over the run. The JSON (`--out`) has all of it and `ok`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import soak_checks as checks
from bench.soak_faults import SCHEDULE, Injector
from bench.soak_load import Outcome, Spec, reference_answers, send, specs
from bench.soak_reference import reference_worker
from pdserve import profile as profiles
from pdserve.stack import Stack, StackError, stack

ADMIN_TOKEN = "soak-admin"
RESTORE_TIMEOUT_S = {"sim": 120.0, "vllm": 400.0}
"""After the load: how long the stack may take to be whole again (a vLLM worker killed last
took 130-190 s to start again on a loaded 2-core box)."""


@dataclass
class Run:
    """What one soak saw, filled in as it goes."""

    outcomes: list[Outcome] = field(default_factory=list)
    started: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    checks: dict[str, Any] = field(default_factory=dict)
    load_s: float = 0.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--engine", choices=["sim", "vllm"], default="sim")
    parser.add_argument(
        "--profile", default=None, help="default: sim (sim), disaggregated (vllm, the tiny model)"
    )
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument(
        "--request-timeout-s", type=float, default=None, help="default: 60 (sim), 240 (vllm)"
    )
    parser.add_argument("--fault-interval-s", type=float, default=None,
                        help="default: the duration spread over one schedule cycle")  # fmt: skip
    parser.add_argument("--hold-s", type=float, default=3.0, help="a hang, slow or refusal lasts")
    parser.add_argument("--no-faults", action="store_true", help="load only (a baseline)")
    parser.add_argument("--quick", action="store_true", help="40 s, 4 clients, faults every 3 s")
    parser.add_argument("--out", type=Path, default=None, help="JSON report file")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s, args.concurrency, args.hold_s = 40.0, 4, 2.0
        args.fault_interval_s = args.fault_interval_s or 3.0
    args.profile = args.profile or ("sim" if args.engine == "sim" else "disaggregated")
    args.request_timeout_s = args.request_timeout_s or (60.0 if args.engine == "sim" else 240.0)
    if args.fault_interval_s is None:
        args.fault_interval_s = args.duration_s / (len(SCHEDULE) + 1)
    return args


def long_prompt_chars(profile: profiles.Profile) -> int:
    """Long prompts: well above the prefill threshold (the variant's too), within the model."""
    wanted = 2 * profile.routing.prefill_threshold + 64
    return min(wanted, profile.model.max_model_len - 64)


async def _load(client: httpx.AsyncClient, run: Run, plan: list[Spec], refs: dict[str, str],
                args: argparse.Namespace) -> None:  # fmt: skip
    stop_at = time.monotonic() + args.duration_s
    numbers = itertools.count()

    async def client_loop() -> None:
        while time.monotonic() < stop_at:
            number = next(numbers)
            if number >= args.max_requests:
                return
            spec = plan[number % len(plan)]
            run.started += 1
            run.outcomes.append(await send(client, spec, refs[spec.key], args.request_timeout_s))

    start = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
    run.load_s = time.monotonic() - start


async def _faults(injector: Injector, args: argparse.Namespace, done: asyncio.Event) -> None:
    for step in itertools.count(1):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.fault_interval_s)
        if done.is_set() or step * args.fault_interval_s > args.duration_s - args.hold_s:
            return
        action, role = SCHEDULE[(step - 1) % len(SCHEDULE)]
        await injector.inject(action, role)


async def _watch(running: Stack, run: Run, done: asyncio.Event) -> None:
    """Every second: the gateway's RSS, and every process and port of the stack's tree."""
    start = time.monotonic()
    while not done.is_set():
        run.rss.append((round(time.monotonic() - start, 1), checks.rss_bytes(running.process.pid)))
        await asyncio.to_thread(note, running, run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)


def note(running: Stack, run: Run) -> None:
    running.note_tree()
    run.pids.update(running.members)
    run.ports.update(port for _, port in running.listening)


async def _after(running: Stack, gateway: httpx.AsyncClient, injector: Injector, run: Run) -> None:
    restore_s = RESTORE_TIMEOUT_S[injector.engine]
    await injector.restore_all(restore_s)
    deadline = time.monotonic() + restore_s
    while not await asyncio.to_thread(running.is_ready):
        if time.monotonic() > deadline:
            raise TimeoutError("the stack is not ready again after the faults")
        await asyncio.sleep(0.5)
    lease_s = running.profile.kv_transfer.block_lease_s
    async with httpx.AsyncClient() as workers:
        run.checks["kv"] = await checks.wait_kv_idle(gateway, workers, lease_s + 15)
    gateway_counts = checks.gateway_counts((await gateway.get("/metrics")).text)
    client_counts = checks.client_counts((o.route, o.counted_status) for o in run.outcomes)
    run.checks["metrics"] = {
        "match": gateway_counts == client_counts,
        "gateway": gateway_counts,
        "client": client_counts,
    }
    await asyncio.to_thread(note, running, run)


async def soak(running: Stack, plan: list[Spec], refs: dict[str, str],
               args: argparse.Namespace) -> tuple[Run, Injector]:  # fmt: skip
    run = Run()
    headers = running.admin_headers()
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    async with httpx.AsyncClient(
        base_url=running.base_url, headers=headers, timeout=args.request_timeout_s, limits=limits
    ) as gateway:
        original = (await gateway.get("/admin/profile")).json()["profile"]
        injector = Injector(gateway, args.engine, original, args.hold_s)
        done = asyncio.Event()
        watcher = asyncio.create_task(_watch(running, run, done))
        faults = None if args.no_faults else asyncio.create_task(_faults(injector, args, done))
        try:
            await _load(gateway, run, plan, refs, args)
        finally:
            done.set()
            await asyncio.gather(*(t for t in (watcher, faults) if t), return_exceptions=True)
            await _after(running, gateway, injector, run)
    return run, injector


@contextlib.contextmanager
def _stack(args: argparse.Namespace, log_dir: Path) -> Iterator[Stack]:
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    with stack(args.profile, env=env, log_dir=log_dir, ready_timeout_s=300) as running:
        yield running


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    profile = profiles.load(args.profile)
    plan = specs(long_prompt_chars(profile), model=profile.model.name)
    with contextlib.ExitStack() as cleanup:
        log_dir = args.log_dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        with reference_worker(args.engine, profile, log_dir) as url:
            refs = reference_answers(url, plan, args.request_timeout_s * 5)
        teardown_error = ""
        soaked: list[tuple[Run, Injector]] = []
        try:
            with _stack(args, log_dir) as running:
                soaked.append(asyncio.run(soak(running, plan, refs, args)))
        except StackError as exc:  # raised by the teardown's own leak check, or at start
            if not soaked:
                raise
            teardown_error = str(exc)[-2000:]
        run, injector = soaked[0]
        run.checks["leaks"] = checks.leaks(run.pids, run.ports)
        run.checks["teardown_error"] = teardown_error
    return report(args, run, injector, plan)


def report(
    args: argparse.Namespace, run: Run, injector: Injector, plan: list[Spec]
) -> dict[str, Any]:
    kinds = {spec.key: spec.kind for spec in plan}
    by_kind: dict[str, Counter[str]] = {}
    for o in run.outcomes:
        by_kind.setdefault(kinds[o.spec], Counter())[o.kind] += 1
    routes = Counter(o.route for o in run.outcomes if o.kind == "completed")
    violations = [o for o in run.outcomes if not o.good]
    faults = injector.report()
    injected = sum(1 for f in faults if f["result"] == "injected")
    covered = routes["local"] > 0 and routes["disaggregated"] > 0 and 2 * injected >= len(faults)
    return {
        "tool": "bench.soak",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_seconds": round(run.load_s, 1),
        "requests": run.started,
        "ended": len(run.outcomes),
        "lost": run.started - len(run.outcomes),
        "outcomes": dict(Counter(o.kind for o in run.outcomes)),
        "outcomes_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "completed_by_route": dict(routes),
        # a stream that failed after its headers (a chat stream's role chunk) but before any
        # content: an SSE error although no token came
        "error_events_before_first_token": sum(
            1 for o in run.outcomes if o.kind == "error_event" and o.tokens == 0
        ),
        "faults_injected": injected,
        "covered": covered,  # both routes served, at least half the faults injected
        "faults": faults,
        "violations": [vars(o) for o in violations[:30]],
        "slowest_request_s": round(max((o.seconds for o in run.outcomes), default=0.0), 2),
        "checks": run.checks,
        "gateway_rss": checks.rss_growth(run.rss),
        "ok": covered and not violations and _checks_pass(run),
    }


def _checks_pass(run: Run) -> bool:
    leaks = run.checks["leaks"]
    return (
        run.started == len(run.outcomes)
        and run.checks["metrics"]["match"]
        and run.checks["kv"]["idle"]
        and not leaks["processes"]
        and not leaks["ports"]
        and not run.checks["teardown_error"]
    )


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['requests']} requests in {result['load_seconds']} s, "
        f"{result['faults_injected']} faults injected, lost {result['lost']}, ok={result['ok']}",
        f"  outcomes: {result['outcomes']}",
        f"  completed by route: {result['completed_by_route']}",
        f"  metrics match: {result['checks']['metrics']['match']}, "
        f"KV idle: {result['checks']['kv']['idle']} ({result['checks']['kv']['seconds']} s), "
        f"leaks: {result['checks']['leaks']}",
        f"  gateway RSS: {result['gateway_rss']}",
    ]
    lines += [f"  fault {f['at_s']:>6} s {f['action']:<11} {f['role']:<8} {f['target']:<14} "
              f"{f['result']}" for f in result["faults"]]  # fmt: skip
    lines += [f"  VIOLATION {v['spec']} {v['kind']}: {v['detail']}" for v in result["violations"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_soak(args)
    if args.out is not None:  # before printing: a closed stdout must not lose the report
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the stack's teardown runs
    sys.exit(main())
