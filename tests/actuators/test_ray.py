"""The Ray actuator on a local Ray instance: simulated workers as Ray actors serving real requests.

Ray is started once for this module with 2 CPUs and, as logical resources, one GPU of Ray's
accelerator type `A100` (what Ray advertises on an A100 node), so placement by accelerator type
is visible on a CPU machine: an A100 pool is placed, an L4 pool waits for a node that never comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import ray

from pdserve.actuators.ray import ACTOR_LABEL, RayActuator
from pdserve.processes import alive
from pdserve.profile import Profile, parse

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        num_gpus=1,
        resources={"accelerator_type:A100": 1},
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def sim_profile(decode_accelerator: str = "cpu") -> Profile:
    return parse(
        {
            "engine": {"kind": "sim", "sim_timing": "vllm-cpu-tiny", "sim_time_scale": 20},
            "routing": {"mode": "disaggregated"},
            "pools": {
                "prefill": {"role": "prefill", "accelerator": "nvidia-a100-80gb"},
                "decode": {
                    "role": "decode",
                    "accelerator": decode_accelerator,
                    "replicas": {"min": 1, "max": 2},
                },
            },
            "actuator": {"kind": "ray", "ray": {"num_cpus_per_replica": 0.5}},
        },
        "test",
        default_name="ray-sim",
    )


async def wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(int(START_TIMEOUT_S / 0.2)):
        try:
            if (await client.get(f"{url}/health", timeout=2)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not healthy within {START_TIMEOUT_S} s")


async def placed(actuator: RayActuator, pool: str, count: int) -> list[str]:
    for _ in range(int(START_TIMEOUT_S / 0.1)):
        handles = await actuator.replicas(pool)
        if len(handles) == count and all(h.alive for h in handles):
            return [h.url for h in handles]
        await asyncio.sleep(0.1)
    raise AssertionError(f"pool {pool} did not reach {count} placed replicas")


async def complete(client: httpx.AsyncClient, url: str, prompt: str) -> str:
    response = await client.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 8
    return str(body["choices"][0]["text"])


async def test_pool_goes_one_two_one_serving_requests(local_ray: None) -> None:
    profile = sim_profile()
    actuator = RayActuator(lambda: profile)
    try:
        async with httpx.AsyncClient() as client:
            await actuator.scale("decode", 1, [])
            (first,) = await placed(actuator, "decode", 1)
            await wait_healthy(client, first)
            await complete(client, first, "one replica")

            await actuator.scale("decode", 2, [])
            urls = await placed(actuator, "decode", 2)
            assert first in urls and len(set(urls)) == 2
            for url in urls:
                await wait_healthy(client, url)
            texts = await asyncio.gather(*(complete(client, u, "same prompt") for u in urls))
            assert texts[0] == texts[1]  # same seeded model on both replicas

            handles = await actuator.replicas("decode")
            by_id = {h.id: h.url for h in handles}
            actor_ids = {h.labels[ACTOR_LABEL] for h in handles}
            assert {ray.ActorID.from_hex(a).hex() for a in actor_ids} == actor_ids
            assert len(actor_ids) == 2
            victim, survivor = sorted(by_id)
            pids = await actuator.pids()
            assert len(pids) == 2
            await actuator.scale("decode", 1, [victim])  # the caller has drained the victim
            assert await placed(actuator, "decode", 1) == [by_id[survivor]]
            await complete(client, by_id[survivor], "after scale down")
            assert len([p for p in pids if not alive(p)]) == 1  # stopped, not orphaned
            with pytest.raises(httpx.TransportError):
                await client.get(f"{by_id[victim]}/health", timeout=2)
    finally:
        await actuator.close()
    assert not [p for p in pids if alive(p)]


async def test_pools_land_only_on_their_accelerator_type(local_ray: None) -> None:
    profile = sim_profile(decode_accelerator="nvidia-l4")
    actuator = RayActuator(lambda: profile)
    try:
        await actuator.scale("prefill", 1, [])  # A100 pool: this Ray node advertises A100
        await actuator.scale("decode", 1, [])  # L4 pool: no L4 node, the actor waits
        (url,) = await placed(actuator, "prefill", 1)
        async with httpx.AsyncClient() as client:
            await wait_healthy(client, url)
        await asyncio.sleep(2)
        assert await actuator.replicas("decode") == []
        assert actuator.pending("decode") == 1 and actuator.pending("prefill") == 0
        # the A100 actor holds the node's one A100 GPU
        assert ray.available_resources().get("GPU", 0) == 0
    finally:
        await actuator.close()
