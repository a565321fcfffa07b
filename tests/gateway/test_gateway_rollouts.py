"""Rollouts through a real `pdserve up` over simulated workers, with the official `openai` client:
a rollout stepped 0 -> 5 -> 50 -> 100 by the admin API under a steady load loses no request and
each request's version is its client's at the weight of the moment (both routes, streamed or
not); a client keeps its version and only ever moves stable -> canary; a canary whose worker
fails a share of its requests is rolled back within the window and /admin/rollouts says why; a
schedule in the profile steps on its own; two LoRA adapters roll out under an alias."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from pdserve.policies.rollout import choose_version
from pdserve.stack import Stack, stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration

ADMIN = "rollout-admin"
LONG = "Sphinx of black quartz, judge my vow. " * 5  # 185 tokens: the P/D hop, for stable
PROMPTS = ["hello", "a short prompt", LONG, "the quick brown fox", f"{LONG} again"]
SERVED = {"stable": "tiny", "canary": "tiny-v2"}


def profile_copy(directory: Path, name: str, **change: Any) -> Path:
    """gw-rollout.yaml with the rollout's keys and the canary pool's sim_faults changed."""
    data = yaml.safe_load((PROFILES / "gw-rollout.yaml").read_text())
    data["rollouts"][0].update(change.get("rollout", {}))
    data["pools"]["canary"]["sim_faults"] = change.get("canary_faults", {})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("rollouts")
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    with stack(PROFILES / "gw-rollout.yaml", env=env, log_dir=directory) as running:
        yield running


def api(running: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{running.base_url}/v1", api_key="none", max_retries=0, timeout=60
    )


def admin(running: Stack, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.request(
        method, f"{running.base_url}/admin{path}", json=body, headers=headers, timeout=10
    )


def step(running: Stack, percent: float) -> dict[str, Any]:
    answer = admin(running, "POST", "/rollouts/tiny", {"canary_percent": percent})
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    assert view["weights"]["canary"] == percent
    return view


@dataclass
class Served:
    client: str
    prompt: str
    version: str  # x-pdserve-version
    model: str  # the body's model
    route: str
    text: str
    sent: float
    done: float


async def complete(
    client: openai.AsyncOpenAI, prompt: str, stream: bool, headers: dict[str, str]
) -> tuple[httpx.Headers, str, str]:
    """(headers, the body's model, the text) of one completion through the gateway."""
    create = client.completions.with_raw_response.create
    raw = await create(
        model="tiny", prompt=prompt, max_tokens=6, stream=stream, extra_headers=headers
    )
    if not stream:
        answer = raw.parse()
        return raw.headers, answer.model, answer.choices[0].text
    chunks = [chunk async for chunk in raw.parse()]  # type: ignore[union-attr]
    return raw.headers, chunks[0].model, "".join(c.choices[0].text for c in chunks if c.choices)


async def one(client: openai.AsyncOpenAI, key: str, prompt: str, stream: bool) -> Served:
    sent = time.monotonic()
    headers, model, text = await complete(client, prompt, stream, {"x-pdserve-client": key})
    version = headers["x-pdserve-version"]
    return Served(
        key, prompt, version, model, headers["x-pdserve-route"], text, sent, time.monotonic()
    )


async def references(running: Stack) -> dict[str, str]:
    """Each prompt's text from the canary's own name: outside the rollout, no version header."""
    texts = {}
    async with api(running) as client:
        for prompt in PROMPTS:
            raw = await client.completions.with_raw_response.create(
                model="tiny-v2", prompt=prompt, max_tokens=6
            )
            assert "x-pdserve-version" not in raw.headers
            texts[prompt] = raw.parse().choices[0].text
    return texts


async def load(client: openai.AsyncOpenAI, stop: asyncio.Event, lanes: int) -> list[Served]:
    """`lanes` clients in parallel, each request a new client key, until `stop`."""
    counter = itertools.count()
    served: list[Served] = []

    async def lane() -> None:
        while not stop.is_set():
            i = next(counter)
            prompt = PROMPTS[i % len(PROMPTS)]
            served.append(await one(client, f"load-{i}", prompt, stream=i % 3 == 0))

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return served


@dataclass(frozen=True)
class Step:
    percent: float
    asked: float  # the admin call went out
    answered: float  # and came back: the step took effect in between


async def stepped_under_load(running: Stack) -> tuple[list[Served], list[Step]]:
    """The load while the rollout steps 0 -> 5 -> 50 -> 100."""
    stop = asyncio.Event()
    async with api(running) as client:
        task = asyncio.create_task(load(client, stop, lanes=6))
        steps: list[Step] = []
        for percent in (0, 5, 50, 100):
            asked = time.monotonic()
            await asyncio.to_thread(step, running, percent)
            steps.append(Step(percent, asked, time.monotonic()))
            await asyncio.sleep(1.5)
        stop.set()
        return await task, steps


def weight_at(steps: list[Step], served: Served) -> float | None:
    """The weight over the whole of a request's time; None when a step may have fallen in it."""
    if any(s.asked <= served.done and served.sent <= s.answered for s in steps):
        return None
    before = [s.percent for s in steps if s.answered < served.sent]
    return before[-1] if before else None


def test_stepped_0_5_50_100_under_load_loses_nothing_and_follows_the_weight(
    gateway: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = asyncio.run(references(gateway))
    served, steps = asyncio.run(stepped_under_load(gateway))
    judged = {s.percent: [r for r in served if weight_at(steps, r) == s.percent] for s in steps}
    assert all(len(judged[p]) >= 10 for p in judged), {p: len(v) for p, v in judged.items()}
    for request in served:  # every request answered (an error would have raised), and right
        assert request.text == texts[request.prompt]
        assert request.model == SERVED[request.version]  # the version's own served name
    for percent, requests in judged.items():
        for request in requests:
            assert request.version == choose_version(percent, request.client, 0.0)
    canary = {p: sum(r.version == "canary" for r in v) for p, v in judged.items()}
    assert canary[0] == 0 and canary[100] == len(judged[100])
    with capsys.disabled():
        shares = {p: f"{canary[p]}/{len(v)} canary" for p, v in judged.items()}
        print(f"\nrollout under load: {len(served)} requests, all 200; away from steps {shares}")
    routes = {(r.version, r.route) for r in served}
    assert {("stable", "disaggregated"), ("stable", "local"), ("canary", "local")} <= routes
    view = admin(gateway, "GET", "/rollouts").json()["tiny"]
    assert view["state"] == "complete" and view["last_step"]["reason"] == "admin: canary to 100%"
    assert view["window"]["canary"]["errors"] == view["window"]["stable"]["errors"] == 0
    assert view["window"]["canary"]["requests"] > 0


async def sticky_versions(running: Stack, keys: list[str]) -> list[dict[str, str]]:
    """Each client's version at 0, 5, 50 and 100%, asked twice at each weight."""
    seen = []
    async with api(running) as client:
        for percent in (0, 5, 50, 100):
            await asyncio.to_thread(step, running, percent)
            for _ in range(2):
                answers = await asyncio.gather(*(one(client, k, "hello", False) for k in keys))
                seen.append({a.client: a.version for a in answers})
    return seen


def test_a_client_keeps_its_version_and_moves_only_stable_to_canary(gateway: Stack) -> None:
    keys = [f"sticky-{i}" for i in range(40)]
    seen = asyncio.run(sticky_versions(gateway, keys))
    assert all(seen[i] == seen[i + 1] for i in range(0, 8, 2))  # the same at the same weight
    for before, after in itertools.pairwise(seen):
        assert not [k for k in keys if before[k] == "canary" and after[k] == "stable"]
    counts = [sum(v == "canary" for v in s.values()) for s in seen[::2]]
    assert counts[0] == 0 and counts[-1] == len(keys) and counts == sorted(counts)
    assert 0 < counts[2] < len(keys)  # at 50% some clients moved and some did not


def test_admin_rollouts_answers_unknown_bad_and_unauthorized_requests(gateway: Stack) -> None:
    assert admin(gateway, "POST", "/rollouts/tiny-v2", {"canary_percent": 5}).status_code == 404
    assert admin(gateway, "POST", "/rollouts/tiny", {"canary_percent": 101}).status_code == 400
    assert admin(gateway, "POST", "/rollouts/tiny", {"rollback": "yes"}).status_code == 400
    unauthorized = httpx.get(f"{gateway.base_url}/admin/rollouts", timeout=10)
    assert unauthorized.status_code == 401
    back = admin(gateway, "POST", "/rollouts/tiny", {"rollback": True, "reason": "by hand"})
    assert back.json()["state"] == "rolled_back"
    assert back.json()["last_step"]["reason"] == "admin: rolled back (by hand)"


async def until_rolled_back(running: Stack, limit: int) -> list[tuple[int, str]]:
    """Requests (distinct prompts, no client key) until the rollout is rolled back."""
    answers = []
    async with api(running) as client:
        for batch in range(0, limit, 8):
            prompts = [f"prompt {i}" for i in range(batch, batch + 8)]
            answers += await asyncio.gather(*(probe(client, p) for p in prompts))
            view = await asyncio.to_thread(admin, running, "GET", "/rollouts")
            if view.json()["tiny"]["state"] == "rolled_back":
                return answers
    raise AssertionError(f"not rolled back after {limit} requests")


async def later(running: Stack, count: int) -> list[tuple[int, str]]:
    async with api(running) as client:
        return await asyncio.gather(*(probe(client, f"later {i}") for i in range(count)))


async def probe(client: openai.AsyncOpenAI, prompt: str) -> tuple[int, str]:
    """(status, x-pdserve-version) of one request, errors included."""
    try:
        raw = await client.completions.with_raw_response.create(
            model="tiny", prompt=prompt, max_tokens=4
        )
        return raw.status_code, raw.headers["x-pdserve-version"]
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers["x-pdserve-version"]


def test_a_canary_failing_half_its_requests_is_rolled_back_and_stable_serves_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = profile_copy(
        tmp_path,
        "gw-rollout-failing",
        rollout={"canary_percent": 50},
        canary_faults={"error_share": 0.5},
    )
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    with stack(path, env=env, log_dir=tmp_path) as running:
        answers = asyncio.run(until_rolled_back(running, limit=400))
        failed = [version for status, version in answers if status != 200]
        assert failed and set(failed) == {"canary"}  # the canary's worker's 500s: 503 here
        view = admin(running, "GET", "/rollouts").json()["tiny"]
        assert view["weights"] == {"stable": 100, "canary": 0}
        assert view["last_step"]["reason"].startswith("automatic rollback: canary error rate")
        stable, canary = view["window"]["stable"], view["window"]["canary"]
        assert stable["errors"] == 0 and canary["errors"] >= 1
        assert canary["requests"] >= 10 and stable["requests"] >= 10  # min_requests
        assert asyncio.run(later(running, 30)) == [(200, "stable")] * 30
        with capsys.disabled():
            print(f"\nrolled back after {len(answers)} requests: {view['last_step']['reason']}")


def test_a_schedule_in_the_profile_steps_the_canary_up_on_its_own(tmp_path: Path) -> None:
    path = profile_copy(
        tmp_path, "gw-rollout-schedule", rollout={"steps": [5, 50, 100], "step_every_s": 0.5}
    )
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    with stack(path, env=env, log_dir=tmp_path) as running:
        seen = [admin(running, "GET", "/rollouts").json()["tiny"]]
        deadline = time.monotonic() + 60
        while seen[-1]["state"] != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
            seen.append(admin(running, "GET", "/rollouts").json()["tiny"])
        percents = [v["weights"]["canary"] for v in seen]
        assert percents == sorted(percents) and percents[-1] == 100
        assert set(percents) <= {0, 5, 50, 100}
        assert seen[-1]["last_step"]["reason"].startswith("scheduled: 50% -> 100%")
        assert seen[-1]["steps"] == [5, 50, 100]


async def by_client(running: Stack, keys: list[str]) -> list[tuple[str, str, str]]:
    """(x-pdserve-version, the body's model, the text) for each client's request to `chat`."""
    answers = []
    async with api(running) as client:
        for key in keys:
            raw = await client.completions.with_raw_response.create(
                model="chat", prompt="hello", max_tokens=6, extra_headers={"x-pdserve-client": key}
            )
            answer = raw.parse()
            answers.append((raw.headers["x-pdserve-version"], answer.model, answer.choices[0].text))
    return answers


def test_a_rollout_of_two_adapters_under_an_alias(tmp_path: Path) -> None:
    data = yaml.safe_load((PROFILES / "gw-adapters.yaml").read_text())
    data["rollouts"] = [
        {"model": "chat", "stable": "pirate", "canary": "poet", "canary_percent": 50}
    ]
    path = tmp_path / "gw-adapters-rollout.yaml"
    path.write_text(yaml.safe_dump(data))
    with stack(path, env={"PDSERVE_API_KEYS": ""}, log_dir=tmp_path) as running:
        listed = httpx.get(f"{running.base_url}/v1/models", timeout=10).json()["data"]
        assert "chat" in [card["id"] for card in listed]
        keys = [f"team-{i}" for i in range(12)]
        answers = asyncio.run(by_client(running, keys))
    for key, (version, model, _text) in zip(keys, answers, strict=True):
        assert version == choose_version(50, key, 0.0)
        assert model == {"stable": "pirate", "canary": "poet"}[version]
    texts = {version: text for version, _model, text in answers}
    assert len(texts) == 2 and texts["stable"] != texts["canary"]  # each adapter's own tokens
