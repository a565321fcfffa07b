"""The sim's tokens: the tiny checkpoint's prompt counts, deterministic output, stop strings."""

from __future__ import annotations

import pytest

from pdserve.workers.sim import tokens

pytestmark = pytest.mark.unit


def test_prompt_counts_match_the_tiny_checkpoint_under_vllm() -> None:
    # measured on vLLM with the tiny checkpoint: "Hello world" -> 11, chat "Hi" -> 5
    assert len(tokens.encode_text("Hello world")) == 11
    assert len(tokens.encode_chat([{"role": "user", "content": "Hi"}])) == 5
    assert len(tokens.encode_text("héllo")) == 6  # UTF-8 bytes


def test_output_is_a_function_of_seed_and_prompt() -> None:
    prompt = tokens.encode_text("the same prompt")
    first = tokens.generate(0, prompt, 100)
    assert first == tokens.generate(0, prompt, 100)
    assert tokens.generate(0, prompt, 10) == first[:10]  # a prefix for fewer tokens
    assert tokens.generate(1, prompt, 100) != first
    assert tokens.generate(0, tokens.encode_text("another prompt"), 100) != first
    assert all(len(t) == 1 and 32 <= ord(t) < 127 for t in first)


def test_stop_cuts_text_and_counts_the_token_that_completed_it() -> None:
    out = list("abcdefgh")
    assert tokens.cut_at_stop(out, ("de",)) == (5, "de")
    assert tokens.visible_text(out[:5], "de") == "abc"
    assert tokens.cut_at_stop(out, ("zz",)) == (8, None)
    assert tokens.cut_at_stop(out, ("gh", "b")) == (2, "b")
