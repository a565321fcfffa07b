"""Workers require a key only the gateway holds: the simulated worker honours `--api-key` and
`VLLM_API_KEY` as vLLM's server does (401 `{"error": "Unauthorized"}` on /v1 without it,
probes open), and the gateway sends `PDSERVE_WORKER_API_KEY` on every call to its workers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from pdserve import profile as profiles
from pdserve.workers.sim.launch import SimFleet
from tests.support.gateway_server import GatewayFactory

pytestmark = pytest.mark.integration

KEY = "only-the-gateway-knows"
BODY = {"model": "tiny", "prompt": "hello there", "max_tokens": 3}


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[str, str]]:
    """Two workers: one with --api-key, one with VLLM_API_KEY in its environment."""
    with SimFleet() as fleet:
        flag = fleet.start("both", flags=["--api-key", KEY, "--time-scale", "50"])
        env = fleet.start("both", flags=["--time-scale", "50"], env={"VLLM_API_KEY": KEY})
        yield flag, env


@pytest.mark.parametrize("which", [0, 1], ids=["flag", "env"])
def test_a_worker_called_without_the_key_gets_401(keyed: tuple[str, str], which: int) -> None:
    url = keyed[which]
    missing = httpx.post(f"{url}/v1/completions", json=BODY, timeout=10)
    assert (missing.status_code, missing.json()) == (401, {"error": "Unauthorized"})
    wrong = httpx.post(
        f"{url}/v1/completions", json=BODY, headers={"Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 401
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    right = httpx.post(
        f"{url}/v1/completions", json=BODY, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert right.status_code == 200, right.text
    # probes and scrapes need no key (vLLM guards /v1, /v2, /inference, /cohere only)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200


def _static_profile(url: str) -> profiles.Profile:
    data = profiles.load("sim").model_dump(mode="json")
    data["routing"]["mode"] = "standard"
    data["pools"] = {"decode": {**data["pools"]["decode"], "role": "both"}}
    data["actuator"] = {"kind": "static", "static": {"endpoints": {"decode": [url]}}}
    return profiles.parse(data, "keyed")


async def test_the_gateway_sends_the_workers_key(
    keyed: tuple[str, str], gateway_server: GatewayFactory
) -> None:
    profile = _static_profile(keyed[0])
    env = {"PDSERVE_API_KEYS": "", "PDSERVE_WORKER_API_KEY": KEY}
    async with gateway_server(profile, env) as base, httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/v1/completions", json=BODY)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 3
    unkeyed = gateway_server(profile, {"PDSERVE_API_KEYS": ""})
    async with unkeyed as base, httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{base}/v1/completions", json=BODY)
    assert refused.status_code == 401  # without the key the worker turns the gateway away
