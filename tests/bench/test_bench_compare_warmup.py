"""The comparison's warm-up against a stand-in OpenAI server whose first requests are slow:
it must measure the settled prefill time whatever the first ones cost, bounded by what it
measured, not by a constant."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.compare_profiles import PLANS, fit_to_prefill, warm_up

pytestmark = pytest.mark.unit

PLAN = PLANS["vllm"]


def _server(long_delays: list[float | None], chat_delay: float = 0.01) -> Starlette:
    """Long prompts (>= 1,000 characters) answer after the next delay of `long_delays`
    (None: HTTP 500), chats after `chat_delay`; one streamed token each."""
    delays = iter(long_delays)

    async def completions(request: Request) -> Response:
        body = await request.json()
        delay = next(delays) if len(body["prompt"]) >= 1000 else chat_delay
        if delay is None:
            return JSONResponse({"error": {"message": "engine died"}}, status_code=500)

        async def stream() -> AsyncIterator[bytes]:
            await asyncio.sleep(delay)
            chunk = {"choices": [{"text": "x", "index": 0}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


def _warm(app: Starlette, ceiling_s: float) -> float:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return warm_up("http://stack", "small", PLAN, ceiling_s, client=client)


def test_a_first_prompt_many_times_slower_than_the_rest_is_waited_out() -> None:
    # the first long prompt costs 30x a settled one (the old bound was a constant 2 x 30 s for
    # the whole warm-up, which a 34 s prefill paid twice already passed); 0.3 / 0.05 > 1.25, then
    # 0.06 / 0.05 = 1.2 <= 1.25: settled after the third
    measured = _warm(_server([1.5, 0.3, 0.05, 0.06, 9.0]), ceiling_s=60.0)
    assert measured == pytest.approx(0.06, abs=0.04)


def test_a_later_prompt_is_bounded_by_the_one_before_it() -> None:
    # 0.2 s, then 0.1 s (not settled: 2x), then one that hangs: cut at 4 x 0.1 s, not the
    # 60 s ceiling, and the last good measurement stands
    started = time.monotonic()
    measured = _warm(_server([0.2, 0.1, 30.0]), ceiling_s=60.0)
    assert measured == pytest.approx(0.1, abs=0.05)
    assert time.monotonic() - started < 5.0


def test_a_first_prompt_that_fails_is_an_error_that_says_why() -> None:
    with pytest.raises(RuntimeError, match="first long prompt failed: HTTP 500"):
        _warm(_server([None]), ceiling_s=60.0)
    with pytest.raises(RuntimeError, match="no answer in 0.5 s"):
        _warm(_server([5.0]), ceiling_s=0.5)


PHASES = [
    # phase, drain, (light, heavy) intervals, prefill -> phase, drain
    (30.0, 30.0, (8.1, 4.2), 7.08, 30.0, 30.0),  # this README's machine: unchanged
    # an AVX2 box, 34.3 s prefills: 3 x 39.4 = 118.2 s phase; drain 118.2 x (34.3 / 20.6 - 1)
    # + 34.3 = 112.9 s, so the heavier rate's queue empties before the phase is scored
    (30.0, 30.0, (39.4, 20.6), 34.3, 118.2, 112.9),
    (30.0, 30.0, (0.2, 0.08), math.nan, 30.0, 30.0),  # simulated workers: fixed intervals
]


@pytest.mark.parametrize(("phase", "drain", "intervals", "prefill", "want_p", "want_d"), PHASES)
def test_phases_and_drains_stretch_to_the_measured_prefill(
    phase: float,
    drain: float,
    intervals: tuple[float, float],
    prefill: float,
    want_p: float,
    want_d: float,
) -> None:
    got_p, got_d = fit_to_prefill(phase, drain, intervals, prefill)
    assert (got_p, got_d) == (pytest.approx(want_p, abs=0.05), pytest.approx(want_d, abs=0.05))
