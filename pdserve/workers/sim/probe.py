"""Measuring a running worker (real vLLM or simulated) over its OpenAI API, as a client sees it:
TTFT over prompt lengths, inter-token latency at several batch sizes, and the stall a long
prefill puts on a running decode. The same probe runs against both, so the numbers compare.

Prompts are random lowercase text, salted per run so no prefix cache serves them; the prompt's
length in tokens is read back from the response's usage, so any tokenizer works.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from pdserve.workers.sim.fit import Observation

SWEEP_LENGTHS = (32, 128, 384, 768, 1152, 1536)  # characters (= tokens for the tiny checkpoint)
BATCH_SIZES = (1, 4, 8)


@dataclass(frozen=True)
class Stream:
    prompt_tokens: int
    sent: float  # perf_counter when the request left
    stamps: tuple[float, ...]  # perf_counter at each token chunk

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.sent

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    def mean_gap(self, first: int = 1, last: int = -1) -> float:
        """Tokens `first`..`last` over the time between them: the decode rate, whatever chunks
        arrive bunched (a real server's gaps spread, the simulated one's keep to their mean)."""
        stamps = self.stamps[first:] if last == -1 else self.stamps[first : last + 1]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


@dataclass
class Measurements:
    """What the probe saw; the observations feed `fit.fit_cpu`, the ratios the shape checks."""

    ttft_by_length: dict[int, float] = field(default_factory=dict)  # prompt tokens -> median
    itl: float = 0.0  # median over single streams of their mean gap
    itl_by_batch: dict[int, float] = field(default_factory=dict)
    stall_base_s: float = 0.0  # a lone decode's mean gap
    stall_gap_s: float = 0.0  # its longest gap while a long prompt is prefilled beside it
    observations: list[Observation] = field(default_factory=list)

    def summary(self) -> str:
        ttft = ", ".join(f"{n}: {t * 1e3:.1f}" for n, t in self.ttft_by_length.items())
        batch = ", ".join(f"{k}: {t * 1e3:.2f}" for k, t in self.itl_by_batch.items())
        return (
            f"TTFT ms by prompt tokens {{{ttft}}}; ITL {self.itl * 1e3:.2f} ms, by batch "
            f"{{{batch}}}; stall {self.stall_gap_s * 1e3:.1f} ms over {self.stall_base_s * 1e3:.2f}"
        )

    def ratios(self) -> dict[str, float]:
        """Machine-free shape: how TTFT grows with the prompt, ITL with the batch, and how much
        of a long prompt's prefill a running decode waits out in one gap.

        The stall is taken over that prompt's own TTFT (the same length), not over the lone
        ITL: a stall over ITL multiplies the error of the lone ITL (which the batch ratio and
        the median checks hold already) into the stall's, so a 30% bound on it was tighter
        than the bounds on its parts (CI: lone ITL sim 6.3 / real 5.1 ms and stall sim 110 /
        real 142 ms gave 17.5 against 27.9)."""
        lengths = sorted(self.ttft_by_length)
        batches = sorted(self.itl_by_batch)
        return {
            "ttft_long_over_short": self.ttft_by_length[lengths[-1]]
            / self.ttft_by_length[lengths[1]],
            "itl_batch_over_single": self.itl_by_batch[batches[-1]] / self.itl_by_batch[batches[0]],
            "stall_over_long_ttft": self.stall_gap_s / self.ttft_by_length[lengths[-1]],
        }


def prompt(chars: int, salt: str) -> str:
    rng = random.Random(f"{salt}/{chars}")
    return "".join(chr(rng.randrange(97, 123)) for _ in range(chars))


@dataclass
class Probe:
    """Requests to one worker from one pooled client; use as `async with Probe(url, model)`."""

    url: str
    model: str
    salt: str = field(default_factory=lambda: f"probe-{time.time_ns()}")
    timeout_s: float = 120.0
    client: httpx.AsyncClient = field(init=False)
    _count: int = 0

    async def __aenter__(self) -> Probe:
        self.client = httpx.AsyncClient(timeout=self.timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def stream(
        self, chars: int, max_tokens: int, on_token: Callable[[int], None] | None = None
    ) -> Stream:
        """One streamed completion of a fresh prompt of `chars` characters; `on_token(n)` is
        called as the n-th token arrives."""
        self._count += 1
        body = {"model": self.model, "prompt": prompt(chars, f"{self.salt}/{self._count}"),
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        stamps: list[float] = []
        prompt_tokens = chars
        sent = time.perf_counter()
        async with self.client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("choices"):
                    stamps.append(time.perf_counter())
                    if on_token is not None:
                        on_token(len(stamps))
                if chunk.get("usage"):
                    prompt_tokens = int(chunk["usage"]["prompt_tokens"])
        if len(stamps) < 3:
            raise RuntimeError(
                f"{self.url}: a stream of {chars} characters gave {len(stamps)} tokens"
            )
        return Stream(prompt_tokens, sent, tuple(stamps))

    async def sweep(self, out: Measurements, lengths: Sequence[int], repeats: int) -> None:
        """Prompts alone on the worker: TTFT per length and the gaps that follow each."""
        max_tokens = 16
        ttfts: dict[int, list[float]] = {}
        single_gaps: list[float] = []
        for _ in range(repeats):
            for chars in lengths:
                got = await self.stream(chars, max_tokens)
                ttfts.setdefault(got.prompt_tokens, []).append(got.ttft)
                gap = got.mean_gap()
                single_gaps.append(gap)
                out.observations.append(Observation("ttft", got.ttft, got.prompt_tokens))
                context = got.prompt_tokens + max_tokens // 2
                out.observations.append(Observation("itl", gap, 0, 1, context))
        out.ttft_by_length = {n: statistics.median(v) for n, v in sorted(ttfts.items())}
        out.itl = statistics.median(single_gaps)

    async def batch_itl(self, batch: int, chars: int = 64, max_tokens: int = 32) -> float:
        """Median gap while `batch` streams decode together (the first and last gaps left out:
        the batch forms and drains there)."""
        streams = await asyncio.gather(*(self.stream(chars, max_tokens) for _ in range(batch)))
        return statistics.median(s.mean_gap(3, -4) for s in streams)

    async def stall(
        self, long_chars: int, max_tokens: int = 80, at_token: int = 24
    ) -> tuple[float, float]:
        """(mean gap, longest gap once a `long_chars` prompt arrived) of one running decode."""
        launched: list[asyncio.Task[Stream]] = []

        def send_long(count: int) -> None:
            if count == at_token:
                launched.append(asyncio.create_task(self.stream(long_chars, 3)))

        decode = await self.stream(32, max_tokens, send_long)
        long_stream = await launched[0]
        after = [g for t, g in zip(decode.stamps[1:], decode.gaps, strict=True)
                 if t > long_stream.sent]  # fmt: skip
        if not after:
            raise RuntimeError(
                f"{self.url}: the decode ended before the long prompt was sent "
                f"({max_tokens} tokens): the client was starved of CPU or the worker is too fast"
            )
        return decode.mean_gap(2, at_token - 2), max(after)

    async def measure(
        self, lengths: Sequence[int] = SWEEP_LENGTHS, repeats: int = 3
    ) -> Measurements:
        """Warm-up, the TTFT sweep, ITL by batch size, and the stall of a long prefill."""
        for chars in (64, 512, max(lengths)):
            await self.stream(chars, 16)  # first requests pay one-off costs (graphs, caches)
        out = Measurements()
        await self.sweep(out, lengths, repeats)
        # repeats interleaved, medians kept: a few seconds of someone else's load moves one
        by_batch: dict[int, list[float]] = {k: [] for k in BATCH_SIZES}
        stalls: list[tuple[float, float]] = []
        for _ in range(repeats):
            for batch in BATCH_SIZES:
                by_batch[batch].append(await self.batch_itl(batch))
            stalls.append(await self.stall(max(lengths)))
        out.itl_by_batch = {k: statistics.median(v) for k, v in by_batch.items()}
        for batch, gap in out.itl_by_batch.items():  # context: 64 + 16 tokens each, mid-stream
            out.observations.append(Observation("itl", gap, 0, batch, batch * (64 + 16)))
        out.stall_base_s = statistics.median(base for base, _ in stalls)
        out.stall_gap_s = statistics.median(gap for _, gap in stalls)
        return out


def measure(
    url: str, model: str, lengths: Sequence[int] = SWEEP_LENGTHS, repeats: int = 3
) -> Measurements:
    """`Probe.measure` from synchronous code."""

    async def run() -> Measurements:
        async with Probe(url, model) as probe:
            return await probe.measure(lengths, repeats)

    return asyncio.run(run())
