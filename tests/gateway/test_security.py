"""Attacks on the gateway's inputs, each a test that fails when its defence is removed: client
`kv_transfer_params` (both routes), the admin API's profile name, API key comparison, client
request ids, and the admin API on a non-loopback bind. Gateway in-process over real simulated
worker processes; the workers report what they received (`GET /sim/received`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from fastapi import FastAPI

from pdserve import disagg
from pdserve.gateway import admin
from pdserve.gateway.app import create_app
from pdserve.gateway.server import bound_profile
from tests.support import PROFILES
from tests.support.gateway import gateway_profile, running_app, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

KEY, ADMIN = "sec-key", "sec-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = "The quick brown fox jumps over the lazy dog. " * 4  # 180 tokens >= threshold 64
EVIL = {
    "do_remote_prefill": True,
    "do_remote_decode": True,
    "remote_host": "10.9.9.9",
    "remote_port": 1,
    "remote_block_ids": [[1]],
    "remote_engine_id": "attacker",
    "remote_request_id": "someone-elses",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    env = {"PDSERVE_API_KEYS": f"{KEY},other-key:5,third-key", "PDSERVE_ADMIN_TOKEN": ADMIN}
    async with running_app("gw-disaggregated", env) as pair:
        yield pair


def _worker_url(app: FastAPI, pool: str) -> str:
    url: str = app.state.gateway.manager.pools[pool].serving()[0].url
    return url


async def _received(url: str, request_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as direct:
        seen = (await direct.get("/sim/received")).json()
    return [entry for entry in seen if entry["request_id"] == request_id]


def _body(chat: bool, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 4, "kv_transfer_params": EVIL}
    if chat:
        return {**body, "messages": [{"role": "user", "content": prompt}]}
    return {**body, "prompt": prompt}


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_client_kv_params_never_reach_a_local_route_worker(
    gateway: tuple[FastAPI, httpx.AsyncClient], chat: bool
) -> None:
    app, client = gateway
    path = "/v1/chat/completions" if chat else "/v1/completions"
    request_id = f"kv-local-{chat}"
    headers = {**AUTH, "x-request-id": request_id}
    answer = await client.post(path, json=_body(chat, "hi"), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-pdserve-route"] == "local"
    [seen] = await _received(_worker_url(app, "decode"), request_id)
    assert seen["kv_transfer_params"] is None


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_client_kv_params_never_reach_a_disaggregated_route_worker(
    gateway: tuple[FastAPI, httpx.AsyncClient], chat: bool
) -> None:
    app, client = gateway
    path = "/v1/chat/completions" if chat else "/v1/completions"
    request_id = f"kv-disagg-{chat}"
    headers = {**AUTH, "x-request-id": request_id}
    answer = await client.post(path, json=_body(chat, LONG), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-pdserve-route"] == "disaggregated"
    prefill_url = _worker_url(app, "prefill")
    [to_prefill] = await _received(prefill_url, request_id)
    assert to_prefill["kv_transfer_params"] == disagg.PREFILL_KV_PARAMS
    [to_decode] = await _received(_worker_url(app, "decode"), request_id)
    params = to_decode["kv_transfer_params"]
    # what the prefill worker answered, naming itself: nothing of the client's
    assert f"http://{params['remote_host']}:{params['remote_port']}" == prefill_url
    assert params["remote_engine_id"] != EVIL["remote_engine_id"]
    assert params["remote_request_id"] != EVIL["remote_request_id"]


def _profile_file(directory: Path) -> Path:
    """A valid profile the gateway could switch to (same model), named by a path."""
    data = yaml.safe_load((PROFILES / "gw-disaggregated.yaml").read_text())
    path = directory / "attacker-chosen.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_admin_profile_name_is_a_name_never_a_path(
    gateway: tuple[FastAPI, httpx.AsyncClient], tmp_path: Path
) -> None:
    app, client = gateway
    admin = {"Authorization": f"Bearer {ADMIN}"}
    names = [str(_profile_file(tmp_path)), "../profiles/standard", "/etc/passwd", "sim.yaml"]
    for name in names:
        answer = await client.put("/admin/profile", json={"name": name}, headers=admin)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["param"] == "name"
        assert "never a path" in answer.json()["error"]["message"]
    unknown = await client.put("/admin/profile", json={"name": "no-such"}, headers=admin)
    assert unknown.status_code == 400
    assert "no profile named 'no-such'" in unknown.json()["error"]["message"]
    state = (await client.get("/admin/profile", headers=admin)).json()
    assert (state["active"], state["pending"]) == ("gw-disaggregated", None)


async def test_a_non_ascii_api_key_is_a_401_not_a_crash(
    gateway: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = gateway
    for token in ("s\xe9c-key", "\xff" * 7):
        headers = [(b"authorization", f"Bearer {token}".encode("latin-1"))]
        answer = await client.post("/v1/completions", json=_body(False, "hi"), headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_api_key"
        admin = await client.get("/admin/pools", headers=headers)
        assert admin.status_code == 401, admin.text


REQUEST_IDS = [
    ("plain", "req-42_a.b:c/d+e=f@g", True),
    ("too long", "a" * 129, False),
    ("escape sequence", "id\x1b[2J", False),
    ("non-ascii", "caf\xe9", False),
    ("header injection", "x\r\nx-pdserve-route: disaggregated", False),
    ("spaces", "two words", False),
]


@pytest.mark.parametrize(
    "given, kept", [(g, k) for _, g, k in REQUEST_IDS], ids=[n for n, _, _ in REQUEST_IDS]
)
async def test_client_request_ids_are_sanitised(
    gateway: tuple[FastAPI, httpx.AsyncClient], given: str, kept: bool
) -> None:
    app, client = gateway
    headers = [
        (b"x-request-id", given.encode("latin-1")),
        (b"authorization", AUTH["Authorization"].encode()),
    ]
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    answer = await client.post("/v1/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    echoed = answer.headers["x-request-id"]
    if kept:
        assert echoed == given
    else:
        assert echoed != given and len(echoed) == 32 and echoed.isalnum()
    assert len(await _received(_worker_url(app, "decode"), echoed)) == 1  # what the worker got


@contextlib.asynccontextmanager
async def _bound(host: str, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    profile = bound_profile(gateway_profile("gw-standard"), host, None)
    app = create_app(profile, env=env, autoscale=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            await wait_ready(client)
            yield client


async def test_admin_api_needs_a_token_on_a_non_loopback_bind() -> None:
    token = {"Authorization": f"Bearer {ADMIN}"}
    async with _bound("0.0.0.0", {}) as client:
        closed = await client.get("/admin/pools")
        assert closed.status_code == 401
        assert closed.json()["error"]["code"] == "admin_token_unset"
        assert (await client.put("/admin/profile", json={"name": "x"})).status_code == 401
    async with _bound("0.0.0.0", {"PDSERVE_ADMIN_TOKEN": ADMIN}) as client:
        assert (await client.get("/admin/pools")).status_code == 401
        for route in admin.router.routes:  # every admin route, a new one included
            for method in route.methods:
                path = route.path.replace("{model}", "tiny")
                answer = await client.request(method, path, json={"rollback": True})
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.json()["error"]["message"], answer.text  # the OpenAI shape
        assert (await client.get("/admin/pools", headers=token)).status_code == 200
    async with _bound("127.0.0.1", {}) as client:
        assert (await client.get("/admin/pools")).status_code == 200
