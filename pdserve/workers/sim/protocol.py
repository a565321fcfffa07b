"""OpenAI requests as vLLM 0.32 reads them, and its responses and errors field for field.

`parse_request` validates a body with vLLM's messages, parameters and status codes; the
`*_response` and `*_chunk` builders give the exact keys a vLLM server sends (checked against a
real server by tests/workers/sim/test_sim_conformance.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pdserve.workers.sim import tokens

SYSTEM_FINGERPRINT = "vllm-0.32.0-pdserve-sim"
_COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest default


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(message: str, param: str | None, value: Any = None) -> ApiError:
    suffix = f" (parameter={param}" + (f", value={value})" if value is not None else ")")
    return ApiError(400, message + suffix, "BadRequestError", param)


@dataclass(frozen=True)
class ParsedRequest:
    chat: bool
    prompt_ids: list[int]
    max_tokens: int
    stops: tuple[str, ...]
    seed: int
    stream: bool
    include_usage: bool
    kv_params: dict[str, Any] | None
    adapter: str | None = None  # the LoRA adapter it names in `model` (None: the base model)


def parse_request(
    body: Any,
    chat: bool,
    served_model: str,
    max_model_len: int,
    adapters: Collection[str] = (),
) -> ParsedRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "Bad Request", "body")
    model = body.get("model")
    if model is not None and model != served_model and model not in adapters:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {served_model}.",
            "NotFoundError",
            "model",
        )
    prompt_ids = _chat_prompt(body) if chat else _completion_prompt(body)
    if len(prompt_ids) > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {len(prompt_ids)} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            len(prompt_ids),
        )
    return ParsedRequest(
        chat=chat,
        prompt_ids=prompt_ids,
        max_tokens=_max_tokens(body, chat, len(prompt_ids), max_model_len),
        stops=_stops(body.get("stop")),
        seed=_int_param(body, "seed", 0),
        stream=bool(body.get("stream", False)),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage", False)),
        kv_params=body.get("kv_transfer_params")
        if isinstance(body.get("kv_transfer_params"), dict)
        else None,
        adapter=model if model is not None and model != served_model else None,
    )


def _completion_prompt(body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return tokens.encode_text(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if prompt:
        raise bad_request("prompt must be a string or a list of token ids", "prompt")
    raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")


def _chat_prompt(body: dict[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ApiError(
            400,
            "1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', "
            "'msg': 'Input should be a valid list'}",
            "Bad Request",
            "body.messages",
        )
    return tokens.encode_chat(messages)


def _int_param(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {value!r}.", name, value)
    return value


def _max_tokens(body: dict[str, Any], chat: bool, prompt_len: int, max_model_len: int) -> int:
    room = max_model_len - prompt_len
    requested = body.get("max_completion_tokens") if chat else None
    name = "max_completion_tokens" if requested is not None else "max_tokens"
    if requested is None:
        requested = body.get("max_tokens")
    if requested is None:
        return max(1, room if chat else min(room, _COMPLETION_DEFAULT_MAX_TOKENS))
    value = _int_param(body, name, 0)
    if value < 1:
        raise bad_request(f"{name} must be at least 1, got {value}.", name, value)
    if value > max_model_len:
        raise bad_request(
            f"{name}={value} cannot be greater than max_model_len={max_model_len}. Please "
            "request fewer output tokens.",
            name,
            value,
        )
    return max(1, min(value, room))


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise bad_request("stop must be a string or a list of strings", "stop")


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8)


def usage(prompt_tokens: int, completion_tokens: int, details: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if details:
        out["prompt_tokens_details"] = None
        out["completion_tokens_details"] = None
    return out


@dataclass(frozen=True)
class Outcome:
    """A finished request, as the response builders need it."""

    request_id: str
    created: int
    model: str
    text: str
    finish_reason: str
    stop_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    kv_transfer_params: dict[str, Any] | None


def completion_response(out: Outcome) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": out.text,
        "logprobs": None,
        "finish_reason": out.finish_reason,
        "stop_reason": out.stop_reason,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }
    return _envelope(out, "text_completion", choice)


def chat_response(out: Outcome) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": out.text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": out.finish_reason,
        "stop_reason": out.stop_reason,
        "token_ids": None,
        "routed_experts": None,
    }
    body = _envelope(out, "chat.completion", choice)
    tail = {key: body.pop(key) for key in ("kv_transfer_params", "ec_transfer_params", "metrics")}
    body.update({"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None})
    body.update(tail)
    return body


def _envelope(out: Outcome, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": out.request_id,
        "object": kind,
        "created": out.created,
        "model": out.model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": usage(out.prompt_tokens, out.completion_tokens),
        "kv_transfer_params": out.kv_transfer_params,
        "ec_transfer_params": None,
        "metrics": None,
    }


def _chunk_head(request_id: str, created: int, model: str, chat: bool) -> dict[str, Any]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": request_id, "object": kind, "created": created, "model": model}


def role_chunk(request_id: str, created: int, model: str) -> dict[str, Any]:
    """A chat stream's first chunk: the assistant role and empty content."""
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    head = _chunk_head(request_id, created, model, chat=True)
    return {**head, "choices": [choice], "prompt_token_ids": None, "prompt_text": None}


def token_chunk(
    request_id: str,
    created: int,
    model: str,
    chat: bool,
    text: str,
    finish: tuple[str, str | None] | None,
) -> dict[str, Any]:
    """One streamed token; the last also carries `finish_reason` and `stop_reason`."""
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice.update({"delta": {"content": text}, "logprobs": None})
    else:
        choice.update({"text": text, "logprobs": None})
    choice["finish_reason"] = None if finish is None else finish[0]
    if finish is not None or not chat:
        choice["stop_reason"] = None if finish is None else finish[1]
    if not chat:
        choice["prompt_token_ids"] = None
    choice["token_ids"] = None
    return {**_chunk_head(request_id, created, model, chat), "choices": [choice]}


def usage_chunk(
    request_id: str, created: int, model: str, chat: bool, prompt: int, completion: int
) -> dict[str, Any]:
    head = _chunk_head(request_id, created, model, chat)
    return {
        **head,
        "choices": [],
        "usage": usage(prompt, completion, details=False),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def models_response(served_model: str, root: str, max_model_len: int, created: int) -> dict:
    permission = {
        "id": "modelperm-" + secrets.token_hex(8),
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    model = {
        "id": served_model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return {"object": "list", "data": [model]}
