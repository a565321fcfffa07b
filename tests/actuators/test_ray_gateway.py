"""Through the gateway: a pool of simulated workers on Ray actors goes 1 -> 2 -> 1 replicas under
a burst, driven by the autoscaler, with every request answered (official openai client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import ray

from pdserve.profile import Profile, parse

pytestmark = pytest.mark.integration

ADMIN = {"PDSERVE_ADMIN_TOKEN": "admin-secret"}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def ray_profile() -> Profile:
    return parse(
        {
            "engine": {"kind": "sim", "sim_timing": "vllm-cpu-tiny", "max_num_seqs": 64},
            "routing": {"mode": "standard"},
            "pools": {
                "decode": {
                    "role": "both",
                    "replicas": {"min": 1, "max": 2},
                    "scaling": {
                        "target_concurrency": 2,
                        "stable_window_s": 3,
                        "panic_window_s": 1,
                        "scale_down_delay_s": 4,
                        "interval_s": 0.25,
                        "drain_timeout_s": 30,
                    },
                }
            },
            "actuator": {"kind": "ray", "ray": {"num_cpus_per_replica": 0.5}},
            "gateway": {"metrics_interval_s": 0.2},
        },
        "test",
        default_name="ray-sim",
    )


async def pools(client: httpx.AsyncClient, base: str) -> dict[str, Any]:
    response = await client.get(
        f"{base}/admin/pools", headers={"authorization": "Bearer admin-secret"}
    )
    response.raise_for_status()
    return dict(response.json()["decode"])


async def wait_ready(client: httpx.AsyncClient, base: str, count: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = await pools(client, base)
        states = [e["state"] for e in view["endpoints"]]
        if states.count("ready") == count and len(states) == count:
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"decode pool never had exactly {count} ready replicas: {view}")


async def chat(api: openai.AsyncOpenAI, tokens: int) -> int:
    response = await api.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "tell a long story"}],
        max_tokens=tokens,
        temperature=0,
    )
    assert response.usage is not None
    return response.usage.completion_tokens


async def successes(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


async def test_ray_pool_scales_one_two_one_through_the_gateway(
    local_ray: None, gateway_server: Any
) -> None:
    async with (
        gateway_server(ray_profile(), ADMIN) as base,
        httpx.AsyncClient(timeout=30) as client,
    ):
        api = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        await wait_ready(client, base, 1, timeout_s=60)
        # 8 concurrent long chats: concurrency 8 / target 2 = 4.00 >= 2 x 1 ready -> panic,
        # rate max(1 + 1, 2 x 1) = 2 = max
        burst = [asyncio.create_task(chat(api, 400)) for _ in range(8)]
        view = await wait_ready(client, base, 2, timeout_s=60)
        assert any(d["panic"] and d["desired"] == 2 for d in view["decisions"])
        urls = [e["url"] for e in view["endpoints"]]
        more = await asyncio.gather(*(chat(api, 50) for _ in range(8)))
        assert more == [50] * 8
        assert await asyncio.gather(*burst) == [400] * 8
        served = [await successes(client, url) for url in urls]
        assert all(count > 0 for count in served), served  # both replicas answered requests
        assert sum(served) == 16
        # idle: stable window 3 s then 4 s down delay, drained replica removed -> 1
        view = await wait_ready(client, base, 1, timeout_s=60)
        downs = [d for d in view["decisions"] if d["direction"] == "down"]
        assert [(d["current"], d["desired"]) for d in downs][-1] == (2, 1)
        assert await chat(api, 20) == 20
        await api.close()
