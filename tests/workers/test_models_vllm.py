"""The real model end to end: `pdserve up` with the shipped `local` profile as it is (SmolLM2-135M-
Instruct, a vLLM prefill and decode worker a core each, KV over NIXL), driven with the official
openai client, against a `both` worker of the same checkpoint (one server prefilling and
decoding, no connector) started beside it. One stack and one extra server for the module."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve.processes import free_port, stop_tree
from pdserve.stack import Stack, stack
from pdserve.workers.checkpoint import ensure_model

pytestmark = pytest.mark.vllm

READY_TIMEOUT_S = 400.0  # three vLLM servers starting at once on 2 cores
QUESTION = "What is the capital of France? Answer in one sentence."
# English prose, about 430 SmolLM2 tokens: past the local profile's 256-token threshold
LONG = (
    "The history of the harbour town begins with a handful of fishing families who settled on "
    "the northern shore. Over the following centuries they built a stone pier, a market hall "
    "and a lighthouse whose keeper wrote down the weather every morning. "
) * 8 + "Summarise the history of the town in two sentences."


@pytest.fixture(scope="module")
def real(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    for name in list(cluster.running):  # room for this module's three servers
        cluster.stop(name)
    log_dir = tmp_path_factory.mktemp("smollm2")
    model = ensure_model("smollm2")  # converted once per machine (.ci/install does it)
    port = free_port()
    argv = [sys.executable, "-m", "pdserve.cli", "worker", "--role", "both", "--cores", "0"]
    argv += ["--model", str(model), "--served-model-name", "smollm2", "--port", str(port)]
    argv += ["--max-model-len", "4096", "--ready-timeout", str(READY_TIMEOUT_S)]
    with (log_dir / "both.log").open("wb") as log:
        both = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    try:
        with stack(
            "local", log_dir=log_dir, ready_timeout_s=READY_TIMEOUT_S, stop_grace_s=120
        ) as up:
            _wait_healthy(f"http://127.0.0.1:{port}", both, log_dir / "both.log")
            yield up, f"http://127.0.0.1:{port}"
    finally:
        stop_tree(both.pid, grace_s=60)
        both.poll()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the both worker exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"the both worker was not healthy in {READY_TIMEOUT_S} s")


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def test_the_first_chat_answers_real_text(real: tuple[Stack, str]) -> None:
    up, _ = real
    assert up.profile.model.name == "smollm2"  # the shipped default, no override
    raw = _client(up.base_url).chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=40,
        temperature=0,
    )
    answer = raw.parse().choices[0].message.content
    assert answer == "The capital of France is Paris.", answer
    assert raw.headers["x-pdserve-route"] == "local"  # ~40 prompt tokens < 256


def test_greedy_tokens_through_nixl_equal_a_both_workers(real: tuple[Stack, str]) -> None:
    up, both_url = real
    decode_url = _decode_url(up)
    before = _kv_transfer_prompt_tokens(decode_url)
    raw = _client(up.base_url).completions.with_raw_response.create(
        model="smollm2", prompt=LONG, max_tokens=24, temperature=0
    )
    assert raw.headers["x-pdserve-route"] == "disaggregated"
    disaggregated = raw.parse()
    assert disaggregated.usage is not None and disaggregated.usage.prompt_tokens >= 256
    moved = _kv_transfer_prompt_tokens(decode_url) - before
    assert moved > 0  # the decode worker took the prompt's KV from the prefill worker
    reference = _client(both_url).completions.create(
        model="smollm2", prompt=LONG, max_tokens=24, temperature=0
    )
    assert disaggregated.choices[0].text == reference.choices[0].text  # token for token
    assert len(reference.choices[0].text.split()) >= 5  # real words, not one repeated token


def _decode_url(up: Stack) -> str:
    pools = httpx.get(f"{up.base_url}/admin/pools", headers=up.admin_headers(), timeout=30).json()
    return str(pools["decode"]["endpoints"][0]["url"])


def _kv_transfer_prompt_tokens(url: str) -> float:
    """vLLM's count of prompt tokens whose KV came from another worker."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm:prompt_tokens_by_source_total"
        and sample.labels.get("source") == "external_kv_transfer"
    )
