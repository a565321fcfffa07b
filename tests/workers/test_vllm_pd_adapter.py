"""P/D with a LoRA adapter on real vLLM: greedy tokens through prefill -> NIXL -> decode, both
workers applying the seeded adapter `pirate`, equal a unified worker's with the same adapter,
and differ from the base model's (the adapter changes greedy output, so equality can fail)."""

from __future__ import annotations

import pytest

from pdserve.disagg import decode_request, kv_params_of

pytestmark = pytest.mark.vllm

EXTERNAL = "vllm:prompt_tokens_by_source_total"


@pytest.fixture(scope="module")
def workers(cluster):
    return cluster.require("prefill-lora", "decode-lora", "both-lora")


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_disaggregated_adapter_greedy_equals_one_worker(workers, pd, api: str) -> None:
    body = {**pd.body_for(api, 300, stream=False), "model": "pirate"}
    expected = pd.call(workers["both-lora"].url, body)
    base = pd.call(workers["both-lora"].url, {**body, "model": "tiny"})
    assert expected.token_ids != base.token_ids  # the adapter's own greedy output
    assert len(set(expected.token_ids)) > pd.MAX_TOKENS // 3

    decode = workers["decode-lora"]
    pulled_before = decode.metric(EXTERNAL, source="external_kv_transfer")
    prefill_response = pd.prefill(workers["prefill-lora"].url, body)
    assert kv_params_of(prefill_response) is not None
    got = pd.call(decode.url, decode_request(body, prefill_response))
    assert decode.metric(EXTERNAL, source="external_kv_transfer") - pulled_before > 0
    assert got.token_ids == expected.token_ids
