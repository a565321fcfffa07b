"""Two models behind one gateway over real vLLM CPU workers (tests/support/profiles/
vllm-models.yaml): `tiny` disaggregated on a prefill and a decode worker, `tiny-b` (the same
checkpoint under another name) standard on a `both` worker. Each request reaches its model's
workers only (their vLLM counters, labelled by the served name, say so), its greedy text equals a
direct request to that model's worker, /v1/models lists both, an unknown model is OpenAI's 404.
One stack for the module, driven with the official openai client. The simulated twin, with
autoscaling and a live switch, is test_gateway_models.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve.stack import Stack, stack

pytestmark = pytest.mark.vllm

PROFILE = Path(__file__).parents[1] / "support" / "profiles" / "vllm-models.yaml"
ADMIN = "vllm-models-admin"
READY_TIMEOUT_S = 400.0  # three vLLM servers starting at once on 2 cores
LONG = "".join(f"line {i}: pack my box with five dozen liquor jugs.\n" for i in range(9))
SHORT = "Hello there"  # under the 256-token threshold (tiny's tokens are bytes)
POOLS = {"tiny": ("prefill", "decode"), "tiny-b": ("both-b",)}


@pytest.fixture(scope="module")
def up(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for name in list(cluster.running):  # room for this module's three servers
        cluster.stop(name)
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    with stack(
        PROFILE,
        env=env,
        log_dir=tmp_path_factory.mktemp("models-vllm"),
        ready_timeout_s=READY_TIMEOUT_S,
        stop_grace_s=120,
    ) as running:
        yield running


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def _worker_urls(up: Stack) -> dict[str, str]:
    """Pool -> its one worker's URL."""
    pools = httpx.get(f"{up.base_url}/admin/pools", headers=up.admin_headers(), timeout=30).json()
    assert set(pools) == {"prefill", "decode", "both-b"}, pools
    return {name: str(pool["endpoints"][0]["url"]) for name, pool in pools.items()}


def _finished(urls: dict[str, str]) -> dict[tuple[str, str], float]:
    """(pool, served model name) -> requests its worker finished (vLLM's own counter)."""
    counts: dict[tuple[str, str], float] = {}
    for pool, url in urls.items():
        text = httpx.get(f"{url}/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vllm:request_success_total":
                    key = (pool, sample.labels["model_name"])
                    counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def test_each_model_reaches_its_own_workers_with_their_greedy_text(up: Stack) -> None:
    urls = _worker_urls(up)
    before = _finished(urls)
    client = _client(up.base_url)
    answers: dict[tuple[str, str], tuple[str, str]] = {}
    for model in ("tiny", "tiny-b"):
        for prompt in (SHORT, LONG):
            raw = client.completions.with_raw_response.create(
                model=model, prompt=prompt, max_tokens=16, temperature=0
            )
            completion = raw.parse()
            assert completion.model == model  # vLLM answers with the name its worker serves
            answers[model, prompt] = (raw.headers["x-pdserve-route"], completion.choices[0].text)
    # tiny's long prompt takes its prefill hop; tiny-b is standard: always one worker
    routes = {key: route for key, (route, _) in answers.items()}
    assert routes == {
        ("tiny", SHORT): "local",
        ("tiny", LONG): "disaggregated",
        ("tiny-b", SHORT): "local",
        ("tiny-b", LONG): "local",
    }
    after = _finished(urls)
    moved = {key: after[key] - before.get(key, 0.0) for key in after}
    # every worker counts under its own model's name only, and only its model's requests:
    # tiny's decode worker both of tiny's, its prefill worker the long one's prefill
    assert moved == {("prefill", "tiny"): 1, ("decode", "tiny"): 2, ("both-b", "tiny-b"): 2}

    for model, pool in (("tiny", "decode"), ("tiny-b", "both-b")):
        direct = _client(urls[pool])
        for prompt in (SHORT, LONG):
            reference = direct.completions.create(
                model=model, prompt=prompt, max_tokens=16, temperature=0
            )
            text = answers[model, prompt][1]
            assert text == reference.choices[0].text, (model, prompt)  # token for token
            assert len(text) > 0


def test_a_chat_stream_for_the_second_model_is_served_by_its_worker(up: Stack) -> None:
    chunks = list(
        _client(up.base_url).chat.completions.create(
            model="tiny-b",
            messages=[{"role": "user", "content": SHORT}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {chunk.model for chunk in chunks} == {"tiny-b"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_models_lists_both_and_an_unknown_model_is_openais_404(up: Stack) -> None:
    client = _client(up.base_url)
    assert [card.id for card in client.models.list()] == ["tiny", "tiny-b"]
    for create in (
        lambda: client.completions.create(model="nope", prompt=SHORT, max_tokens=4),
        lambda: client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": SHORT}], max_tokens=4
        ),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            create()
        assert caught.value.code == "model_not_found"
        assert caught.value.param == "model"
        assert "`nope` does not exist" in caught.value.message
