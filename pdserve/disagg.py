"""The P/D hop as pure request transforms: vLLM's disaggregated protocol, no I/O.

1. `prefill_request(body)` is what the gateway sends the prefill worker: the client's request
   capped at one token, not streamed, asking vLLM to keep its KV blocks for a remote decode.
2. The prefill worker answers with `kv_transfer_params` naming those blocks (`kv_params_of`).
3. `decode_request(body, prefill_response)` is the client's original request plus those
   params, passed through untouched so fields a newer vLLM adds survive the gateway.

Clients never steer a pull: `strip_client_kv_params` drops any `kv_transfer_params` a client
sent before either transform runs.
"""

from __future__ import annotations

import copy
from typing import Any

KV_PARAMS_KEY = "kv_transfer_params"

PREFILL_KV_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
"""What a prefill request asks of vLLM's NixlConnector: compute, keep the blocks, await a pull."""

_STREAM_ONLY_KEYS = ("stream_options",)


def strip_client_kv_params(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of the client's body without `kv_transfer_params`."""
    return {key: value for key, value in body.items() if key != KV_PARAMS_KEY}


def is_chat(body: dict[str, Any]) -> bool:
    """A chat completion body (has `messages`) rather than a text completion (`prompt`)."""
    return "messages" in body


def prefill_request(body: dict[str, Any]) -> dict[str, Any]:
    """The body sent to the prefill worker for the client's `body`."""
    request = _one_token(copy.deepcopy(strip_client_kv_params(body)))
    request[KV_PARAMS_KEY] = dict(PREFILL_KV_PARAMS)
    return request


def _one_token(request: dict[str, Any]) -> dict[str, Any]:
    """`request` answered whole with one token (the prefill hop's and the release's shape)."""
    for key in _STREAM_ONLY_KEYS:
        request.pop(key, None)
    request["stream"] = False
    request["max_tokens"] = 1
    if is_chat(request):
        request["max_completion_tokens"] = 1
    return request


def kv_params_of(response: dict[str, Any]) -> dict[str, Any] | None:
    """The `kv_transfer_params` of a prefill worker's response, or None if it sent none."""
    params = response.get(KV_PARAMS_KEY)
    return params if isinstance(params, dict) else None


def decode_request(body: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
    """The body sent to the decode worker: the client's request plus the prefill's KV params.

    Without params in the prefill response the decode worker simply prefills locally.
    """
    request = copy.deepcopy(strip_client_kv_params(body))
    params = kv_params_of(prefill_response)
    if params is not None:
        request[KV_PARAMS_KEY] = copy.deepcopy(params)
    return request


def release_request(body: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
    """A decode request whose only purpose is to free the prefill worker's blocks now, for a
    client that left after its prefill answered: the pull (which frees them) and one token, not
    streamed, its answer discarded. Without it the blocks stay pinned until the lease ends."""
    return _one_token(decode_request(body, prefill_response))
