"""Prompt token counting with the model's own tokenizer.json, off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer

from pdserve.profile import ModelSpec

log = logging.getLogger(__name__)

INLINE_COUNT_CHARS = 2048
"""Prompts up to this size tokenize in well under a millisecond: a thread hop would cost more."""


def model_directory(model: ModelSpec) -> Path:
    from pdserve.workers.checkpoint import NAMED_MODELS, ensure_model

    if model.source in NAMED_MODELS:
        return ensure_model(model.source)
    return Path(model.source)


class PromptCounter:
    """Counts prompt tokens as the worker will: chat bodies through the model's chat template."""

    def __init__(self, tokenizer: Tokenizer | None, chat_template: str | None) -> None:
        self._tokenizer = tokenizer
        env = jinja2.Environment(autoescape=False, keep_trailing_newline=True)
        self._template = env.from_string(chat_template) if chat_template else None

    @classmethod
    def for_model(cls, model: ModelSpec) -> PromptCounter:
        directory = model_directory(model)
        path = directory / "tokenizer.json"
        if not path.is_file():
            log.warning("%s not found: prompt lengths are estimated (4 bytes a token)", path)
            return cls(None, None)
        template = None
        config = directory / "tokenizer_config.json"
        if config.is_file():
            template = json.loads(config.read_text()).get("chat_template")
        jinja = directory / "chat_template.jinja"  # where transformers >= 4.50 saves it
        if template is None and jinja.is_file():
            template = jinja.read_text()
        return cls(Tokenizer.from_file(str(path)), template)

    def prompt_text(self, body: dict[str, Any]) -> str:
        if "messages" in body:
            messages = body["messages"]
            if self._template is not None:
                return self._template.render(messages=messages, add_generation_prompt=True)
            return "".join(f"{m.get('role')}: {m.get('content')}\n" for m in messages)
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else "".join(str(p) for p in prompt)

    def encode_sync(self, body: dict[str, Any]) -> tuple[int, list[int]]:
        """(prompt tokens, their ids); no ids when the tokenizer is missing (an estimate)."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt), list(prompt)
        text = self.prompt_text(body)
        if self._tokenizer is None:
            return (len(text.encode()) + 3) // 4, []
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return len(ids), ids

    async def encode(self, body: dict[str, Any]) -> tuple[int, list[int]]:
        """Short prompts are tokenized inline (microseconds); long ones in a thread."""
        if _body_chars(body) <= INLINE_COUNT_CHARS:
            return self.encode_sync(body)
        return await asyncio.to_thread(self.encode_sync, body)

    async def count(self, body: dict[str, Any]) -> int:
        return (await self.encode(body))[0]


class PromptCounters:
    """One prompt counter per model source, each loaded once (off the event loop) on first use:
    every model counts with its own tokenizer."""

    def __init__(self) -> None:
        self._loading: dict[str, asyncio.Future[PromptCounter]] = {}

    def add(self, model: ModelSpec, counter: PromptCounter) -> None:
        future: asyncio.Future[PromptCounter] = asyncio.get_running_loop().create_future()
        future.set_result(counter)
        self._loading[model.source] = future

    async def of(self, model: ModelSpec) -> PromptCounter:
        future = self._loading.get(model.source)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(PromptCounter.for_model, model))
            self._loading[model.source] = future
        try:
            return await asyncio.shield(future)
        except Exception:
            if self._loading.get(model.source) is future:
                del self._loading[model.source]  # the next request tries again
            raise


def _body_chars(body: dict[str, Any]) -> int:
    prompt = body.get("messages", body.get("prompt"))
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(str(item)) for item in prompt)
    return 0
