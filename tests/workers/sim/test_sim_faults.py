"""Each injected fault of the simulated worker, on real processes (flags and environment)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from pdserve import disagg
from pdserve.workers.sim.launch import SimFleet, wait_healthy

pytestmark = pytest.mark.integration


def client(url: str, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=timeout)


async def test_die_after_tokens_breaks_the_stream_and_exits(fleet: SimFleet) -> None:
    url, process = fleet.spawn("decode", ["--fault-die-after-tokens", "8"])
    wait_healthy(url, 30, process)
    stream = await client(url).completions.create(
        model="tiny", prompt="die", max_tokens=50, stream=True
    )
    received = 0
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        async for chunk in stream:
            received += len(chunk.choices)
    assert received < 8
    assert process.wait(10) == 17


async def test_prefill_fail_fails_prefills_only(fleet: SimFleet) -> None:
    url = fleet.start("prefill", env={"PDSERVE_SIM_FAULT_PREFILL_FAIL": "1"})
    body = {"model": "tiny", "prompt": "prefill me", "max_tokens": 3}
    api = client(url)
    with pytest.raises(openai.InternalServerError):
        pre = disagg.prefill_request(body)
        await api.completions.create(
            **{k: v for k, v in pre.items() if k != disagg.KV_PARAMS_KEY},
            extra_body={disagg.KV_PARAMS_KEY: pre[disagg.KV_PARAMS_KEY]},
        )
    assert (await api.completions.create(**body)).choices[0].text  # local requests still work


async def test_error_share_fails_that_share_of_requests_the_same_prompts_each_time(
    fleet: SimFleet,
) -> None:
    url = fleet.start("both", ["--fault-error-share", "0.5"])
    api = client(url)

    async def fails(prompt: str, stream: bool) -> bool:
        try:
            if stream:
                chunks = await api.completions.create(
                    model="tiny", prompt=prompt, max_tokens=2, stream=True
                )
                _ = [chunk async for chunk in chunks]
            else:
                await api.completions.create(model="tiny", prompt=prompt, max_tokens=2)
        except openai.InternalServerError as exc:
            assert "simulated engine error" in str(exc)
            return True
        return False

    prompts = [f"request {i}" for i in range(40)]
    first = [await fails(p, stream=False) for p in prompts]
    assert 10 <= sum(first) <= 30  # about half, by each prompt's hash
    assert [await fails(p, stream=True) for p in prompts] == first  # a 500 before the stream


async def test_prefill_slow_delays_the_first_token(fleet: SimFleet) -> None:
    url = fleet.start("both", ["--fault-prefill-slow", "0.6"])
    start = time.perf_counter()
    await client(url).completions.create(model="tiny", prompt="slow", max_tokens=1)
    assert time.perf_counter() - start >= 0.6


def test_cold_start_delays_health(fleet: SimFleet) -> None:
    url, process = fleet.spawn("both", ["--fault-cold-start", "2"])
    assert wait_healthy(url, 30, process) >= 1.9


def test_time_scale_shortens_the_cold_start(fleet: SimFleet) -> None:
    url, process = fleet.spawn("both", ["--fault-cold-start", "20", "--time-scale", "20"])
    assert wait_healthy(url, 15, process) < 10


async def wait_port_open(url: str, timeout_s: float = 30.0) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(url)


async def test_hang_accepts_but_never_answers(fleet: SimFleet) -> None:
    url, process = fleet.spawn("both", ["--fault-hang"])
    await wait_port_open(url)
    with pytest.raises(openai.APITimeoutError):
        await client(url, timeout=1.0).completions.create(model="tiny", prompt="x", max_tokens=1)
    async with httpx.AsyncClient() as raw:
        with pytest.raises(httpx.ReadTimeout):
            await raw.get(f"{url}/health", timeout=1.0)
    assert process.poll() is None


async def test_refuse_keeps_the_process_but_not_the_port(fleet: SimFleet) -> None:
    url, process = fleet.spawn("both", [], env={"PDSERVE_SIM_FAULT_REFUSE": "1"})
    await asyncio.sleep(3)
    async with httpx.AsyncClient() as raw:
        with pytest.raises(httpx.ConnectError):
            await raw.get(f"{url}/health", timeout=1.0)
    assert process.poll() is None
