"""The P/D request transforms, table-driven (no servers)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pdserve.disagg import (
    PREFILL_KV_PARAMS,
    decode_request,
    kv_params_of,
    prefill_request,
    release_request,
    strip_client_kv_params,
)

pytestmark = pytest.mark.unit

# A vLLM 0.32 prefill response's params, plus a field a newer vLLM might add.
PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [[3, 4, 5]],
    "remote_engine_id": "engine-abc",
    "remote_request_id": "cmpl-1",
    "remote_host": "127.0.0.1",
    "remote_port": 18500,
    "tp_size": 1,
    "remote_num_tokens": 300,
    "transfer_mode": "pull",
    "field_from_the_future": {"nested": [1, 2]},
}

COMPLETION = {"model": "tiny", "prompt": "hi there", "max_tokens": 20, "temperature": 0}
STREAMED = {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}
CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hello"}],
    "max_completion_tokens": 30,
    "stream": True,
    "stream_options": {"include_usage": True},
}
SNEAKY = {**COMPLETION, "kv_transfer_params": {"remote_host": "10.0.0.9", "remote_port": 1}}


@pytest.mark.parametrize(
    ("body", "expected_extra"),
    [
        (COMPLETION, {}),
        (STREAMED, {}),
        (CHAT, {"max_completion_tokens": 1}),
        (SNEAKY, {}),
    ],
)
def test_prefill_request_asks_for_one_unstreamed_token_and_a_remote_decode(
    body: dict[str, Any], expected_extra: dict[str, Any]
) -> None:
    original = copy.deepcopy(body)
    request = prefill_request(body)
    kept = {k: v for k, v in body.items() if k not in ("stream_options", "kv_transfer_params")}
    expected = {
        **kept,
        "stream": False,
        "max_tokens": 1,
        **expected_extra,
        "kv_transfer_params": PREFILL_KV_PARAMS,
    }
    assert request == expected
    assert "stream_options" not in request
    assert body == original  # the client's body is not mutated


def test_prefill_params_are_a_fresh_copy_each_time() -> None:
    first = prefill_request(COMPLETION)
    first["kv_transfer_params"]["remote_host"] = "changed"
    assert prefill_request(COMPLETION)["kv_transfer_params"]["remote_host"] is None


@pytest.mark.parametrize("body", [COMPLETION, STREAMED, CHAT, SNEAKY])
def test_decode_request_is_the_original_plus_params_untouched(body: dict[str, Any]) -> None:
    response = {"id": "cmpl-1", "choices": [], "kv_transfer_params": PREFILL_PARAMS}
    request = decode_request(body, response)
    assert request == {**strip_client_kv_params(body), "kv_transfer_params": PREFILL_PARAMS}
    assert request["kv_transfer_params"] is not PREFILL_PARAMS  # a copy, not an alias
    assert request.get("stream") == body.get("stream")
    assert request.get("stream_options") == body.get("stream_options")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"kv_transfer_params": PREFILL_PARAMS}, PREFILL_PARAMS),
        ({"kv_transfer_params": None}, None),
        ({}, None),
        ({"kv_transfer_params": "garbage"}, None),
    ],
)
def test_kv_params_of(response: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert kv_params_of(response) == expected


def test_decode_without_params_drops_client_params() -> None:
    # The prefill sent none: the decode worker prefills locally, never from client-given params.
    assert decode_request(SNEAKY, {"choices": []}) == strip_client_kv_params(SNEAKY)
    assert "kv_transfer_params" not in decode_request(SNEAKY, {"choices": []})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (SNEAKY, COMPLETION),
        (COMPLETION, COMPLETION),
        ({"kv_transfer_params": {}}, {}),
    ],
)
def test_strip_client_kv_params(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert strip_client_kv_params(body) == expected


@pytest.mark.parametrize("body", [COMPLETION, STREAMED, CHAT, SNEAKY], ids=str)
def test_release_request_pulls_the_prefills_blocks_for_one_unstreamed_token(
    body: dict[str, Any],
) -> None:
    request = release_request(body, {"kv_transfer_params": PREFILL_PARAMS})
    assert request["kv_transfer_params"] == PREFILL_PARAMS  # the prefill's, never the client's
    assert request["stream"] is False and "stream_options" not in request
    assert request["max_tokens"] == 1
    assert request.get("max_completion_tokens", 1) == 1
    assert request["model"] == body["model"]
