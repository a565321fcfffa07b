"""The central correctness test: greedy tokens through prefill -> NIXL -> decode equal a single
worker's, and the decode worker really pulled the KV (vLLM counts it as external_kv_transfer).
"""

from __future__ import annotations

import pytest

from pdserve.disagg import decode_request, kv_params_of

pytestmark = pytest.mark.vllm

PROMPT_LENGTHS = [1, 127, 128, 129, 500, 1500]  # CPU block size is 128
EXTERNAL = "vllm:prompt_tokens_by_source_total"


@pytest.fixture(scope="module")
def workers(cluster):
    return cluster.require("prefill", "decode", "both")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_disaggregated_greedy_equals_one_worker(
    workers, pd, length: int, api: str, stream: bool
) -> None:
    body = pd.body_for(api, length, stream)
    expected = pd.call(workers["both"].url, body)
    assert len(expected.token_ids) == pd.MAX_TOKENS
    assert len(set(expected.token_ids)) > pd.MAX_TOKENS // 3  # varied: equality can fail

    decode = workers["decode"]
    pulled_before = decode.metric(EXTERNAL, source="external_kv_transfer")
    prefill_response = pd.prefill(workers["prefill"].url, body)
    params = kv_params_of(prefill_response)
    assert params is not None and params["do_remote_prefill"] is True
    assert params["remote_block_ids"]
    got = pd.call(decode.url, decode_request(body, prefill_response))
    pulled = decode.metric(EXTERNAL, source="external_kv_transfer") - pulled_before

    assert got == expected
    if length > 1:
        assert pulled > 0, "the decode worker computed the prompt itself: no KV moved"
        assert pulled <= length
