"""Tokens of the simulated worker: the tiny checkpoint's byte-level scheme, and output that is a
pure function of (seed, prompt tokens), so a prefill worker, a decode worker and a single worker
all produce the same text for the same request.

Prompt counts match the tiny checkpoint served by vLLM: a completion prompt is one token per
UTF-8 byte (no BOS); a chat prompt is `<|role|>content\\n` per message then `<|assistant|>`,
each `<|role|>` a single special token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

SPECIAL_BASE = 256
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|system|>", "<|user|>", "<|assistant|>")
# printable ASCII and space, the characters the tiny checkpoint's greedy output is made of
_ALPHABET = "".join(chr(c) for c in range(32, 127))


def encode_text(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _special(name: str) -> int:
    return SPECIAL_BASE + SPECIALS.index(name)


def encode_chat(messages: Sequence[dict[str, Any]]) -> list[int]:
    """The tiny checkpoint's chat template, tokenized."""
    ids: list[int] = []
    for message in messages:
        role = f"<|{message.get('role', 'user')}|>"
        ids.append(_special(role) if role in SPECIALS else _special("<|user|>"))
        ids.extend(encode_text(f"{_content_text(message.get('content'))}\n"))
    ids.append(_special("<|assistant|>"))
    return ids


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _digest(seed: int, prompt: Sequence[int]) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(seed.to_bytes(8, "little", signed=True))
    hasher.update(b",".join(str(t).encode() for t in prompt))
    return hasher.digest()


def generate(seed: int, prompt: Sequence[int], count: int) -> list[str]:
    """`count` output tokens (one character each) for this prompt and seed."""
    key = _digest(seed, prompt)
    out: list[str] = []
    counter = 0
    while len(out) < count:
        block = hashlib.blake2b(counter.to_bytes(8, "little"), key=key, digest_size=64).digest()
        out.extend(_ALPHABET[b % len(_ALPHABET)] for b in block)
        counter += 1
    return out[:count]


def cut_at_stop(tokens: Sequence[str], stops: Sequence[str]) -> tuple[int, str | None]:
    """(tokens to emit, the stop string hit) under OpenAI `stop`: the text ends before the first
    stop string; the token that completes it is generated (and counted) but not shown."""
    text = ""
    for index, token in enumerate(tokens):
        text += token
        hit = next((s for s in stops if s and s in text), None)
        if hit is not None:
            return index + 1, hit
    return len(tokens), None


def visible_text(tokens: Sequence[str], stop: str | None) -> str:
    text = "".join(tokens)
    return text if stop is None else text[: text.index(stop)]
