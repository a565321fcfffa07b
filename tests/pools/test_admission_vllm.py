"""Issue 18 on real vLLM CPU workers: the shipped `disaggregated` profile (prefill pool may go to
zero, `local_prefill_when_cold`). Once the idle prefill pool has scaled to zero, a long prompt is
served locally AND wakes the prefill pool; the next long prompt goes through NIXL, with greedy
tokens equal to a `both` worker's. At most two vLLM servers run with the stack, the `both`
reference after it; run this tier under `flock /tmp/pdserve-vllm.lock`."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import psutil
import pytest

from pdserve import profile as profiles
from pdserve.stack import Stack, stack

pytestmark = pytest.mark.vllm

ADMIN = "vllm-admission-admin"
READY_TIMEOUT_S = 400.0  # a vLLM server starts in 30-60 s here, up to ~105 s beside others
MAX_TOKENS = 16


def long_prompt(salt: str) -> str:
    """~450 tokens (the tiny model's byte tokenizer), above the profile's 256 threshold."""
    return "".join(f"{salt} line {i}: pack my box with five dozen liquor jugs.\n" for i in range(9))


def pools(up: Stack) -> dict[str, Any]:
    response = httpx.get(f"{up.base_url}/admin/pools", headers=up.admin_headers(), timeout=10)
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    return view


def wait_for(up: Stack, what: str, check: Any, timeout_s: float) -> float:
    """Poll /admin/pools until `check(view)`; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check(pools(up)):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s: {pools(up)}\n{up.log_tail()}")


def complete(base_url: str, prompt: str) -> tuple[str, str, int]:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=300)
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
    )
    answer = raw.parse()
    assert answer.usage is not None
    return (
        raw.headers.get("x-pdserve-route", ""),
        answer.choices[0].text,
        answer.usage.completion_tokens,
    )


def test_disaggregated_prefill_at_zero_wakes_on_a_long_prompt_then_serves_through_nixl(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cluster.close()  # room for the stack's two servers, then the reference
    profile = profiles.load("disaggregated")  # as shipped
    prefill_spec = profile.pools["prefill"]
    assert prefill_spec.replicas.min == 0 and profile.routing.local_prefill_when_cold
    log_dir = tmp_path_factory.mktemp("admission-vllm")
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    with stack(
        "disaggregated", env=env, log_dir=log_dir, ready_timeout_s=READY_TIMEOUT_S, stop_grace_s=120
    ) as up:
        pid = int(pools(up)["prefill"]["endpoints"][0]["labels"]["pid"])
        # idle: the stable window, the down delay and the 60 s scale-to-zero grace
        zero = lambda v: v["prefill"]["desired"] == 0 and not v["prefill"]["endpoints"]  # noqa: E731
        wait_for(up, "prefill at zero", zero, 300)
        stopped = time.monotonic() + 120  # the scale-down is over once its worker has exited
        while psutil.pid_exists(pid) and time.monotonic() < stopped:
            time.sleep(0.2)
        time.sleep(prefill_spec.scaling.interval_s)  # the autoscaler saw the change end
        route, cold_text, tokens = complete(up.base_url, long_prompt("first"))
        assert (route, tokens) == ("local", MAX_TOKENS)  # served while the pool is cold ...
        woke = lambda v: v["prefill"]["desired"] >= 1  # noqa: E731
        wait_for(up, "prefill woken", woke, prefill_spec.scaling.interval_s + 1)  # ... and woke it
        ready = lambda v: v["prefill"]["replicas"]["ready"] >= 1  # noqa: E731
        wait_for(up, "prefill ready", ready, READY_TIMEOUT_S)
        route, nixl_text, tokens = complete(up.base_url, long_prompt("second"))
        assert (route, tokens) == ("disaggregated", MAX_TOKENS)
        decode = up_decode_worker(up)
        pulled = decode_external_tokens(decode)
        assert pulled > 0  # the decode worker took the prompt's KV over NIXL
    both = cluster.require("both")["both"]
    _, reference, _ = complete(both.url, long_prompt("second"))
    assert nixl_text == reference  # token for token
    _, reference_cold, _ = complete(both.url, long_prompt("first"))
    assert cold_text == reference_cold


def up_decode_worker(up: Stack) -> str:
    return str(pools(up)["decode"]["endpoints"][0]["url"])


def decode_external_tokens(url: str) -> float:
    """vllm:prompt_tokens_by_source_total{source="external_kv_transfer"} on the worker."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:prompt_tokens_by_source_total") and "external_kv_transfer" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
