"""The prefill worker failing around the hop: killed before the pull, restarted between
requests, or abandoned (its blocks must come back after the lease)."""

from __future__ import annotations

import time

import openai
import pytest

from pdserve.disagg import decode_request, kv_params_of

pytestmark = pytest.mark.vllm

EXTERNAL = "vllm:prompt_tokens_by_source_total"
USAGE = "vllm:kv_cache_usage_perc"


def disaggregated(pd, workers, body, decode: str = "decode"):
    prefill_response = pd.prefill(workers["prefill"].url, body)
    assert kv_params_of(prefill_response) is not None
    return pd.call(workers[decode].url, decode_request(body, prefill_response))


def test_prefill_restarted_between_requests(cluster, pd) -> None:
    workers = cluster.require("prefill", "decode", "both")
    first = pd.body_for("completions", 300, stream=False) | {"prompt": "restart-1 " * 30}
    assert disaggregated(pd, workers, first) == pd.call(workers["both"].url, first)
    old_engine = kv_params_of(pd.prefill(workers["prefill"].url, first))["remote_engine_id"]

    workers["prefill"] = cluster.restart("prefill")  # same ports, new engine id
    second = pd.body_for("chat", 400, stream=True)
    second["messages"][0]["content"] = "restart-2 " * 40
    params = kv_params_of(pd.prefill(workers["prefill"].url, second))
    assert params["remote_engine_id"] != old_engine
    pulled_before = workers["decode"].metric(EXTERNAL, source="external_kv_transfer")
    assert disaggregated(pd, workers, second) == pd.call(workers["both"].url, second)
    assert workers["decode"].metric(EXTERNAL, source="external_kv_transfer") > pulled_before


def test_prefill_killed_before_the_pull_recompute_gives_right_tokens(cluster, pd) -> None:
    workers = cluster.require("prefill", "decode", "both")
    body = pd.body_for("completions", 700, stream=True)
    body["prompt"] = "killed-recompute " + body["prompt"][17:]
    prefill_response = pd.prefill(workers["prefill"].url, body)
    cluster.crash("prefill")
    started = time.monotonic()
    got = pd.call(workers["decode"].url, decode_request(body, prefill_response))
    assert time.monotonic() - started < 90
    assert got == pd.call(workers["both"].url, body)


def test_abandoned_prefill_blocks_are_freed_after_the_lease(cluster, pd) -> None:
    prefill = cluster.require("prefill")["prefill"]
    idle = prefill.metric(USAGE)
    body = pd.body_for("completions", 1000, stream=False)
    body["prompt"] = "abandoned " + body["prompt"][10:]
    assert kv_params_of(pd.prefill(prefill.url, body)) is not None  # and no decode ever pulls
    held = prefill.metric(USAGE)
    assert held > idle, "the prefill worker freed the blocks at once: no lease to test"
    deadline = time.monotonic() + cluster.lease_s + 60
    while prefill.metric(USAGE) > idle and time.monotonic() < deadline:
        time.sleep(0.5)
    assert prefill.metric(USAGE) == idle
    assert prefill.metric("vllm:nixl_num_kv_expired_reqs_total") >= 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_prefill_killed_before_the_pull_fail_policy_gives_a_clean_error(
    cluster, pd, stream: bool
) -> None:
    workers = cluster.require("prefill", "decode-fail")
    body = pd.body_for("chat", 600, stream=stream)
    body["messages"][0]["content"] = f"killed-fail-{stream} " + body["messages"][0]["content"]
    prefill_response = pd.prefill(workers["prefill"].url, body)
    cluster.crash("prefill")
    started = time.monotonic()
    with pytest.raises(openai.APIError):
        pd.call(workers["decode-fail"].url, decode_request(body, prefill_response))
    assert time.monotonic() - started < 90
    # The decode worker is still healthy and serves the next request itself.
    local = pd.body_for("completions", 50, stream=False)
    assert len(pd.call(workers["decode-fail"].url, local).token_ids) == pd.MAX_TOKENS
