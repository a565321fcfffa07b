"""The soak's requests: a fixed set of greedy request bodies (short chat streams that stay local,
long prompts that take the prefill hop), their reference answers from one `both` worker, and
the outcome of one request through the gateway, classified.

An outcome is good when it is one of: `completed` (the reference's text, token for token),
`error_status` (an HTTP error before the first token: not a 500, OpenAI's error shape) or
`error_event` (an SSE error event in OpenAI's shape after the stream began). Anything else is a
violation: `wrong_tokens`, `http_500`, `bad_error_shape`, `timeout` (no end within the
request's timeout), `transport_error` (the gateway dropped the connection) or `truncated` (a
stream that ended without `[DONE]` or an error event).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

GOOD = ("completed", "error_status", "error_event")
ERROR_KEYS = {"message", "type", "param", "code"}
_TOPICS = ("rivers", "clocks", "bridges", "maps", "tea", "owls", "glass", "salt")
_FILLER = "The quick brown fox jumps over the lazy dog while the soak keeps running. "


@dataclass(frozen=True)
class Spec:
    """One request the soak sends again and again; `key` names it in the report."""

    key: str
    kind: str  # chat | long | long_chat
    path: str
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(frozen=True)
class Outcome:
    spec: str
    kind: str  # one of GOOD, or a violation (module docstring)
    route: str  # the gateway's x-pdserve-route ("none" when it gave none)
    counted_status: str  # the status the gateway should count: HTTP status, 502 for an SSE error
    seconds: float
    tokens: int  # content chunks received
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.kind in GOOD


def specs(long_chars: int, variants: int = 4, model: str = "tiny") -> list[Spec]:
    """`variants` of each kind. Prompts are byte-tokenized (one token a byte), so `long_chars`
    is also the long prompts' token count, give or take the chat template's few."""
    out: list[Spec] = []
    for i in range(variants):
        topic = _TOPICS[i % len(_TOPICS)]
        filler = (f"Soak {i} about {topic}. " + _FILLER * (long_chars // len(_FILLER) + 1))[
            :long_chars
        ]
        greedy = {"model": model, "temperature": 0}
        chat = [{"role": "user", "content": f"soak {i}: say something about {topic}"}]
        out.append(
            Spec(f"chat-{i}", "chat", "/v1/chat/completions",
                 {**greedy, "messages": chat, "max_tokens": 24, "stream": True})
        )  # fmt: skip
        out.append(
            Spec(f"long-{i}", "long", "/v1/completions",
                 {**greedy, "prompt": filler, "max_tokens": 12, "stream": i % 2 == 0})
        )  # fmt: skip
        long_chat = [{"role": "user", "content": filler}]
        out.append(
            Spec(f"long_chat-{i}", "long_chat", "/v1/chat/completions",
                 {**greedy, "messages": long_chat, "max_tokens": 12, "stream": True})
        )  # fmt: skip
    return out


def answer_text(body: dict[str, Any]) -> str:
    """The text of a whole (non-streamed) completion or chat completion."""
    choice = body["choices"][0]
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


def reference_answers(base_url: str, all_specs: Sequence[Spec], timeout_s: float) -> dict[str, str]:
    """Each spec's text from one reference worker, asked without streaming."""
    answers: dict[str, str] = {}
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        for spec in all_specs:
            response = client.post(spec.path, json={**spec.body, "stream": False})
            response.raise_for_status()
            answers[spec.key] = answer_text(response.json())
    return answers


def _is_openai_error(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("error"), dict)
        and set(payload["error"]) >= ERROR_KEYS
    )


def _chunk_text(event: dict[str, Any]) -> str | None:
    """A stream chunk's content, or None for a chunk without choices (usage)."""
    choices = event.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")


@dataclass
class _Stream:
    text: str = ""
    tokens: int = 0
    error: Any = None
    done: bool = False


async def _read_stream(response: httpx.Response) -> _Stream:
    got = _Stream()
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            got.done = True
            break
        event = json.loads(data)
        if "error" in event:
            got.error = event
            continue
        piece = _chunk_text(event)
        if piece:
            got.text += piece
            got.tokens += 1
    return got


async def _exchange(client: httpx.AsyncClient, spec: Spec, reference: str) -> tuple[str, ...]:
    """(kind, route, counted status, tokens, detail) of one request."""
    async with client.stream("POST", spec.path, json=spec.body) as response:
        route = response.headers.get("x-pdserve-route", "none")
        status = response.status_code
        if status != 200:
            payload = json.loads(await response.aread() or b"null")
            kind = "http_500" if status == 500 else "error_status"
            if kind == "error_status" and not _is_openai_error(payload):
                kind = "bad_error_shape"
            return kind, route, str(status), "0", str(payload)[:300]
        if not spec.stream:
            text = answer_text(json.loads(await response.aread()))
            kind = "completed" if text == reference else "wrong_tokens"
            return kind, route, "200", "1", "" if kind == "completed" else f"{text!r}"
        got = await _read_stream(response)
    if got.error is not None:
        kind = "error_event" if _is_openai_error(got.error) else "bad_error_shape"
        return kind, route, "502", str(got.tokens), str(got.error)[:300]
    if not got.done:
        return "truncated", route, "200", str(got.tokens), f"after {got.text!r}"
    if got.text != reference:
        return "wrong_tokens", route, "200", str(got.tokens), f"{got.text!r} != {reference!r}"
    return "completed", route, "200", str(got.tokens), ""


async def send(client: httpx.AsyncClient, spec: Spec, reference: str, timeout_s: float) -> Outcome:
    """One request, bounded by `timeout_s` in all; never raises."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            kind, route, status, tokens, detail = await _exchange(client, spec, reference)
    except TimeoutError:
        kind, route, status, tokens, detail = "timeout", "?", "?", "0", f"over {timeout_s:g} s"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        kind, route, status, tokens, detail = "transport_error", "?", "?", "0", repr(exc)[:300]
    seconds = time.monotonic() - start
    return Outcome(spec.key, kind, route, status, seconds, int(tokens), detail)
