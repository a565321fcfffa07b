"""The comparison's warm-up and the workload sized from it: a fresh stack's one-time costs are
paid before a phase is measured, and the long prompt's prefill time measured there sets the
phases' intervals and lengths."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import httpx
import yaml

from bench.compare_plans import Plan
from bench.load import Target, send_one

WARM_LONG_PROMPTS = 5  # at most this many long prompts for the prefill time to settle
SETTLED = 1.25  # two long prompts' TTFTs within this ratio: the one-time costs are paid
NEXT_BOUND = 4.0  # a later warm-up request may take this many times the long prompt before it


def warm_up(
    url: str, model: str, plan: Plan, ceiling_s: float, client: httpx.AsyncClient | None = None
) -> float:
    """Long prompts, each followed by a chat, one after another until two long prompts' TTFTs
    agree: the first requests of a fresh stack pay one-time costs (NIXL handshakes, first-step
    allocations, cold caches) that no constant bounds on every machine. The first long prompt
    is bounded only by `ceiling_s` (the gateway's request timeout: slower is broken), each
    later request by NEXT_BOUND x the last long prompt's time. Returns the last long prompt's
    TTFT (its prefill time on the idle stack); raises if the first long prompt fails."""
    target = Target(url=url, model=model, request_timeout_s=ceiling_s, tokenizer=plan.tokenizer())
    ttfts = asyncio.run(_warm_long_prompts(target, plan, ceiling_s, client))
    print(f"  warm-up long-prompt TTFTs: {', '.join(f'{t:.2f}' for t in ttfts)} s", flush=True)
    return ttfts[-1]


async def _warm_long_prompts(
    target: Target, plan: Plan, ceiling_s: float, client: httpx.AsyncClient | None
) -> list[float]:
    ttfts: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        bound = ceiling_s
        for i in range(WARM_LONG_PROMPTS):
            seq = 10_000_000 + 2 * i
            long = send_one(client, target, "long", plan.long_prompt_tokens, 4, seq)
            try:
                result = await asyncio.wait_for(long, bound)
            except TimeoutError:
                result = None
            if result is None or not result.ok:
                if ttfts:  # slower than NEXT_BOUND x the one before: keep what was measured
                    break
                why = result.error if result is not None else f"no answer in {bound:g} s"
                raise RuntimeError(f"the warm-up's first long prompt failed: {why}")
            ttfts.append(result.ttft)
            bound = NEXT_BOUND * result.e2e
            chat = send_one(client, target, "chat", 64, 8, seq + 1)
            with contextlib.suppress(TimeoutError):  # a slow chat is measured in the phases
                await asyncio.wait_for(chat, bound)
            if len(ttfts) >= 2 and max(ttfts[-2:]) <= SETTLED * min(ttfts[-2:]):
                break
    return ttfts


def request_timeout(path: Path) -> float:
    """The profile's gateway request timeout: the warm-up's bound on a first request."""
    gateway = yaml.safe_load(path.read_text()).get("gateway") or {}
    return float(gateway.get("request_timeout_s", 600.0))


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


MIN_LONG_PROMPTS = 3  # long prompts a phase holds at the lighter rate, however slow the box


def fit_to_prefill(
    phase_s: float, drain_s: float, intervals: tuple, prefill_s: float
) -> tuple[float, float]:
    """Phase and drain lengths stretched to the measured prefill time (never shortened): a
    phase holds MIN_LONG_PROMPTS long prompts at the lighter rate, and a drain outlasts the
    queue the heavier rate leaves on one prefill worker: phase x (prefill / interval - 1)
    seconds of work, plus the prompt in service."""
    if not math.isfinite(prefill_s):
        return phase_s, drain_s
    light, heavy = intervals
    phase_s = max(phase_s, MIN_LONG_PROMPTS * light)
    queued_s = phase_s * max(0.0, prefill_s / heavy - 1.0)
    return phase_s, max(drain_s, queued_s + prefill_s)
