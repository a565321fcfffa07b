"""What the chat streams on a decode worker see while a pulled (NIXL) request joins it.

Starts `pdserve up` with bench/profiles/cpu-disaggregated-small.yaml (one prefill worker on core
0, one decode worker on core 1), warms it up, then runs 4 chat streams on the decode worker for
80 s while three 1,800-token prompts go through the prefill worker at 15, 40 and 65 s. For each
long prompt it reports the chats' token gaps in the window from 1.5 s before its first token
(when the decode worker pulls the KV) to 1.5 s after, against the chats' median gap.

`--busy N` runs N busy-loop processes beside the stack (a loaded box); `--py-spy` also samples
the decode worker with py-spy (50 Hz, Python frames) and reports the time its model thread spent
in `nixl_agent.transfer`, the READ that vLLM's NixlConnector posts from the model step.

    python -m bench.join_pause --out bench/runs/join_pause_quiet.json
    python -m bench.join_pause --busy 2 --py-spy --out bench/runs/join_pause_busy.json

Real vLLM runs only while this holds /tmp/pdserve-vllm.lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench.compare_profiles import vllm_lock
from bench.load import RequestResult, Target, send_one
from pdserve.stack import Stack, listening_ports, stack

PROFILE = Path("bench/profiles/cpu-disaggregated-small.yaml")
CHATS, CHAT_TOKENS, RUN_S = 4, 250, 80.0
LONG_AT_S, LONG_TOKENS = (15.0, 40.0, 65.0), 1800
WINDOW_S = 1.5  # either side of a long prompt's first token
SPY_RATE_HZ = 50


async def _drive(url: str) -> tuple[list[RequestResult], list[RequestResult]]:
    """Warm-up, then the chats and the long prompts; (chats, longs)."""
    target = Target(url=url, model="small", request_timeout_s=600)
    async with httpx.AsyncClient() as client:
        for i in range(3):  # the pair's one-time costs (NIXL handshake, first allocations)
            await send_one(client, target, "long", LONG_TOKENS, 4, 900 + i)
        t0 = time.monotonic()
        chats: list[RequestResult] = []
        longs: list[RequestResult] = []

        async def chat_stream(k: int) -> None:
            seq = 5000 + 1000 * k
            while time.monotonic() - t0 < RUN_S:
                seq += 1
                chats.append(await send_one(client, target, "chat", 64, CHAT_TOKENS, seq))

        async def long_prompts() -> None:
            for i, at in enumerate(LONG_AT_S):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                longs.append(await send_one(client, target, "long", LONG_TOKENS, 16, 7000 + i))

        await asyncio.gather(long_prompts(), *(chat_stream(k) for k in range(CHATS)))
    return chats, longs


def gaps_at(chats: list[RequestResult]) -> list[tuple[float, float]]:
    """(monotonic time of the later token, gap) for every chat token gap."""
    out = []
    for r in chats:
        times = [r.start + t for t in r.token_times]
        out += [(b, b - a) for a, b in zip(times, times[1:], strict=False)]
    return out


def join_report(chats: list[RequestResult], longs: list[RequestResult]) -> dict[str, object]:
    gaps = gaps_at(chats)
    values = np.array([g for _, g in gaps])
    median = float(np.median(values))
    joins = []
    for r in longs:
        first = r.start + r.ttft
        near = [g for at, g in gaps if first - WINDOW_S <= at <= first + WINDOW_S]
        joins.append(
            {
                "ttft_s": round(r.ttft, 3),
                "route": r.route,
                "error": r.error,
                "gaps_in_window": len(near),
                "window_gap_max_s": round(max(near, default=0.0), 3),
                "window_gap_mean_s": round(float(np.mean(near)) if near else 0.0, 3),
                "window_gaps_over_2x_median": sum(1 for g in near if g > 2 * median),
            }
        )
    pct = np.percentile(values, [50, 99, 99.9, 100])
    return {
        "chat_gaps": len(values),
        "chat_gap_p50_s": round(float(pct[0]), 4),
        "chat_gap_p99_s": round(float(pct[1]), 4),
        "chat_gap_p999_s": round(float(pct[2]), 4),
        "chat_gap_max_s": round(float(pct[3]), 4),
        "joins": joins,
    }


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def decode_worker_pid(running: Stack, decode_port: int) -> int:
    """The stack's process that listens on the decode worker's port (its vLLM API server)."""
    running.note_tree()
    for pid, member in running.members.items():
        if any(port == decode_port for _, port in listening_ports(member)):
            return pid
    raise RuntimeError(f"no process of the stack listens on port {decode_port}")


def transfer_runs(speedscope: Path) -> list[float]:
    """Seconds of each contiguous stretch the model thread spent in nixl_agent.transfer."""
    data = json.loads(speedscope.read_text())
    names = [f["name"] for f in data["shared"]["frames"]]
    runs: list[float] = []
    for profile in data["profiles"]:
        inside = [any(names[i] == "nixl_agent.transfer" for i in s) for s in profile["samples"]]
        if not any(inside):
            continue
        count = 0
        for flag in [*inside, False]:
            if flag:
                count += 1
            elif count:
                runs.append(round(count / SPY_RATE_HZ, 3))
                count = 0
    return runs


def run(busy: int, spy: bool) -> dict[str, object]:
    spy_out = Path(tempfile.mkdtemp(prefix="join-pause-")) / "decode.speedscope.json"
    with busy_loops(busy), stack(PROFILE, ready_timeout_s=420) as running:
        sampler = None
        if spy:
            port = _decode_port(running.base_url, running.admin_headers())
            pid = decode_worker_pid(running, port)
            command = [_py_spy(), "record", "--pid", str(pid)]
            command += ["--subprocesses", "--nonblocking", "--rate", str(SPY_RATE_HZ)]
            command += ["--format", "speedscope", "-o", str(spy_out)]
            sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        chats, longs = asyncio.run(_drive(running.base_url))
        if sampler is not None:
            sampler.send_signal(2)  # SIGINT: py-spy writes its file and exits
            sampler.wait(60)
    report = join_report(chats, longs)
    report.update(busy_loops=busy, load_average=psutil.getloadavg())
    if spy:
        report["nixl_transfer_stretches_s"] = transfer_runs(spy_out)
    return report


def _py_spy() -> str:
    """py-spy from the bench extra: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def _decode_port(url: str, headers: dict[str, str]) -> int:
    pools = httpx.get(f"{url}/admin/pools", headers=headers, timeout=10).json()
    return int(pools["decode"]["endpoints"][0]["url"].rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes beside it")
    parser.add_argument("--py-spy", action="store_true", help="sample the decode worker")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args(argv)
    with vllm_lock("vllm"):
        report = run(args.busy, args.py_spy)
    report["command"] = "python -m bench.join_pause " + " ".join(argv or sys.argv[1:])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
