"""An async load generator for any OpenAI-compatible server (pdserve's gateway, vLLM, ...).

Arrivals: Poisson, bursty on/off, fixed interval or a CSV trace (`t,prompt_tokens,output_tokens`),
plus closed-loop streams (each sends its next request when the last one finishes). A request
class mix: short chats, long RAG prompts with short answers, long generations. It streams
`/v1/completions` and records per request TTFT, every token's arrival, TPOT, end-to-end and
errors, and reports goodput: requests per second meeting the TTFT and ITL bounds. Bounded in
request count and time, with a progress bar; writes JSON, a Markdown table and latency CDFs.

    python -m bench.load --url http://127.0.0.1:8000 --arrival poisson --rate 2 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from bench import workload
from bench.metrics import RequestResult
from bench.report import cdf_plot, latency_panels, run_markdown, summarize_run, write_json

_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from",
    "that", "this", "it", "be", "are", "was", "or", "an",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where and how to send requests."""

    url: str
    model: str
    ignore_eos: bool = True  # vLLM's extension: always generate max_tokens
    chars_per_token: float = 1.0  # pdserve's seeded models are byte-level: one token per byte
    request_timeout_s: float = 600.0
    # prompts are numbered from here: runs with different bases share no prompt (and no
    # prefix-cache hits) on the same server
    first_seq: int = 1
    # a real model's tokenizer (tokenizers.Tokenizer): prompts are then token-id lists of exactly
    # the drawn length in its tokens, instead of text at chars_per_token
    tokenizer: Any = None


@dataclass
class Limits:
    duration_s: float  # no request starts after this
    max_requests: int  # nor beyond this many in all
    drain_s: float = 60.0  # in-flight requests may finish this long after duration


@dataclass
class LoadRun:
    results: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0


def prompt_text(tokens: int, seq: int, chars_per_token: float) -> str:
    """A prompt of about `tokens` tokens that starts with a unique prefix, so no request is
    served from another's prefix cache."""
    target_chars = max(1, int(tokens * chars_per_token))  # the seeded models add no BOS
    rng = np.random.default_rng(seq)
    words = [f"r{seq}"]
    length = len(words[0])
    while length < target_chars:
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:target_chars]


def completion_body(
    target: Target, kind: str, prompt_tokens: int, output_tokens: int, seq: int
) -> dict[str, object]:
    body: dict[str, object] = {
        "model": target.model,
        "prompt": prompt_text(prompt_tokens, seq, target.chars_per_token),
        "max_tokens": int(output_tokens),
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.tokenizer is not None:  # words average under 8 characters a token
        text = prompt_text(prompt_tokens, seq, 8.0)
        ids = target.tokenizer.encode(text, add_special_tokens=False).ids
        body["prompt"] = ids[: max(1, int(prompt_tokens))]
    if target.ignore_eos:
        body["ignore_eos"] = True
    return body


def _apply_chunk(result: RequestResult, data: dict, elapsed: float) -> None:
    if data.get("usage"):
        result.prompt_tokens = int(data["usage"].get("prompt_tokens") or result.prompt_tokens)
        result.output_tokens = int(data["usage"].get("completion_tokens") or 0)
    if data.get("choices"):
        if not result.token_times:
            result.ttft = elapsed
        result.token_times.append(elapsed)


async def send_one(
    client: httpx.AsyncClient,
    target: Target,
    kind: str,
    prompt_tokens: int,
    output_tokens: int,
    seq: int,
) -> RequestResult:
    """Stream one completion; never raises for a failed request (the error is recorded)."""
    body = completion_body(target, kind, prompt_tokens, output_tokens, seq)
    result = RequestResult(kind=kind, start=time.monotonic(), prompt_tokens=prompt_tokens)
    try:
        async with client.stream(
            "POST", f"{target.url}/v1/completions", json=body, timeout=target.request_timeout_s
        ) as response:
            result.route = response.headers.get("x-pdserve-route")
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                result.error = f"HTTP {response.status_code}: {text}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                _apply_chunk(result, json.loads(line[5:]), time.monotonic() - result.start)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.e2e = time.monotonic() - result.start
    if not result.output_tokens:
        result.output_tokens = len(result.token_times)
    if result.error is None and not result.token_times:
        result.error = "no tokens streamed"
    return result


class _Run:
    """One load run's shared bookkeeping: a request counter, results, the progress bar."""

    def __init__(
        self, client: httpx.AsyncClient, target: Target, limits: Limits, progress: tqdm
    ) -> None:
        self.client, self.target, self.limits, self.progress = client, target, limits, progress
        self.started = time.monotonic()
        self.sent = 0
        self.results: list[RequestResult] = []

    def may_send(self) -> bool:
        elapsed = time.monotonic() - self.started
        return elapsed < self.limits.duration_s and self.sent < self.limits.max_requests

    async def send(self, kind: str, prompt_tokens: int, output_tokens: int) -> None:
        self.sent += 1
        result = await send_one(
            self.client, self.target, kind, prompt_tokens, output_tokens,
            self.target.first_seq + self.sent - 1,
        )  # fmt: skip
        result.start -= self.started
        self.results.append(result)
        self.progress.update(1)

    async def open_loop(self, requests: workload.Requests) -> None:
        tasks = []
        for i in range(len(requests)):
            delay = float(requests.arrival[i]) - (time.monotonic() - self.started)
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.may_send():
                break
            kind = requests.kinds[int(requests.kind[i])]
            tasks.append(
                asyncio.create_task(
                    self.send(kind, int(requests.prompt_tokens[i]), int(requests.output_tokens[i]))
                )
            )
        await asyncio.gather(*tasks)

    async def closed_loop(self, kind: str, stream: int) -> None:
        spec = workload.CLASSES[kind]
        rng = np.random.default_rng(1000 + stream)
        await asyncio.sleep(0.1 * stream)  # stagger the streams' first requests
        while self.may_send():
            spread = rng.uniform(1 - spec.jitter, 1 + spec.jitter, size=2)
            await self.send(
                kind,
                max(1, round(spec.prompt_tokens * spread[0])),
                max(1, round(spec.output_tokens * spread[1])),
            )
            if not self.results[-1].ok:
                await asyncio.sleep(1.0)  # a failing server is not hammered by a stream


async def run_load(
    target: Target,
    limits: Limits,
    requests: workload.Requests | None = None,
    streams: dict[str, int] | None = None,
    show_progress: bool = True,
) -> LoadRun:
    """Drive open-loop `requests` and closed-loop `streams` (class -> count) together."""
    connections = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    total = (
        min(limits.max_requests, len(requests)) if requests is not None and not streams else None
    )
    with tqdm(total=total, unit="req", disable=not show_progress, file=sys.stderr) as progress:
        async with httpx.AsyncClient(limits=connections) as client:
            run = _Run(client, target, limits, progress)
            jobs = [run.open_loop(requests)] if requests is not None else []
            jobs += [
                run.closed_loop(kind, i) for kind, n in (streams or {}).items() for i in range(n)
            ]
            deadline = limits.duration_s + limits.drain_s
            # past the deadline, requests still in flight are reported as unfinished errors
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*jobs), timeout=deadline)
            wall = min(time.monotonic() - run.started, deadline)
    unfinished = run.sent - len(run.results)
    run.results += [
        RequestResult(kind="?", start=math.nan, error="unfinished at deadline")
        for _ in range(unfinished)
    ]
    return LoadRun(results=run.results, wall_s=wall)


def build_requests(args: argparse.Namespace) -> workload.Requests | None:
    """The open-loop requests the command line asks for (None for closed-loop streams only)."""
    rng = np.random.default_rng(args.seed)
    mix = workload.parse_mix(args.mix)
    if args.arrival == "trace":
        return workload.read_trace(args.trace)
    if args.arrival == "none":
        return None
    if args.arrival == "poisson":
        arrival = workload.poisson_arrivals(args.rate, args.duration, rng)
    elif args.arrival == "fixed":
        arrival = workload.fixed_arrivals(1.0 / args.rate, args.duration)
    else:
        rate = workload.on_off_rate(args.rate, args.on_s, args.off_s)
        arrival = workload.modulated_arrivals(rate, args.rate, args.duration, rng)
    return workload.with_mix(arrival, mix, rng)


def parse_streams(text: str) -> dict[str, int]:
    """'chat=4' -> {'chat': 4}: closed-loop streams per request class."""
    streams = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if name not in workload.CLASSES:
            raise ValueError(f"unknown request class {name!r}")
        streams[name] = int(count or 1)
    return streams


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", default="tiny")
    _add_arrival_arguments(parser)
    _add_limit_arguments(parser)
    _add_prompt_arguments(parser)
    parser.add_argument("--out", default="bench/results/load", help="output directory")
    parser.add_argument("--quick", action="store_true", help="20 s, at most 40 requests")
    return parser


def _add_arrival_arguments(parser: argparse.ArgumentParser) -> None:
    """When requests arrive, and which classes they are."""
    parser.add_argument(
        "--arrival",
        choices=["poisson", "bursty", "fixed", "trace", "none"],
        default="poisson",
        help="open-loop arrivals (none: streams only)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="requests/s (bursty: when on)")
    parser.add_argument("--on-s", type=float, default=5.0, help="bursty: seconds on")
    parser.add_argument("--off-s", type=float, default=10.0, help="bursty: seconds off")
    parser.add_argument("--trace", help="CSV trace with columns t,prompt_tokens,output_tokens")
    parser.add_argument("--mix", default="chat=0.6,rag=0.3,gen=0.1", help="class weights")
    parser.add_argument("--streams", default="", help="closed-loop streams, e.g. chat=4")


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """How long the run sends and drains, and the bounds goodput counts against."""
    parser.add_argument("--duration", type=float, default=60.0, help="send for this long, s")
    parser.add_argument("--max-requests", type=int, default=10_000)
    parser.add_argument("--drain", type=float, default=60.0, help="wait for in-flight, s")
    parser.add_argument("--slo-ttft", type=float, default=None, help="TTFT bound, s")
    parser.add_argument("--slo-itl", type=float, default=None, help="mean ITL (TPOT) bound, s")


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """How prompts are written and numbered."""
    parser.add_argument(
        "--chars-per-token",
        type=float,
        default=1.0,
        help="prompt characters per token (1 for pdserve's byte-level models)",
    )
    parser.add_argument(
        "--no-ignore-eos",
        action="store_true",
        help="do not send vLLM's ignore_eos (outputs may end early)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--first-seq",
        type=int,
        default=None,
        help="number of the first prompt (default: from the clock, so that repeated runs "
        "against one server do not hit its prefix cache)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.duration, args.max_requests, args.drain = min(args.duration, 20.0), 40, 30.0
    target = Target(
        url=args.url.rstrip("/"),
        model=args.model,
        ignore_eos=not args.no_ignore_eos,
        chars_per_token=args.chars_per_token,
        first_seq=args.first_seq if args.first_seq is not None else int(time.time()) * 1000,
    )
    limits = Limits(duration_s=args.duration, max_requests=args.max_requests, drain_s=args.drain)
    run = asyncio.run(run_load(target, limits, build_requests(args), parse_streams(args.streams)))
    summary = summarize_run(run.results, run.wall_s, args.slo_ttft, args.slo_itl)
    out = Path(args.out)
    write_json(
        {
            "args": vars(args),
            "wall_s": run.wall_s,
            "summary": summary,
            "requests": [asdict(r) for r in run.results],
        },
        out / "load.json",
    )
    table = run_markdown(summary, f"load: {args.arrival} {args.url}")
    (out / "load.md").write_text(table)
    cdf_plot(latency_panels(run.results), out / "load_cdf.png", "latency CDFs")
    print(table)
    print(f"wrote {out}/load.json, load.md, load_cdf.png")
    return 0 if summary["all"]["errors"] < summary["all"]["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
