"""The benchmarks with the real model: prompts of exact lengths in SmolLM2's own tokens, and the
comparison's smollm2 plan on profiles that serve it."""

from __future__ import annotations

import pytest

from bench.compare_plans import PLANS, PROFILES
from bench.kv_transfer import prompt
from bench.load import Target, completion_body
from pdserve import profile as profiles

pytestmark = pytest.mark.integration  # the converted checkpoint (cached once per machine)


def test_load_prompts_are_exact_lengths_in_the_models_tokens_with_unique_prefixes() -> None:
    tokenizer = PLANS["smollm2"].tokenizer()
    target = Target(url="http://unused", model="smollm2", tokenizer=tokenizer)
    first = completion_body(target, "long", 1800, 16, seq=7)["prompt"]
    second = completion_body(target, "long", 1800, 16, seq=8)["prompt"]
    chat = completion_body(target, "chat", 128, 128, seq=9)["prompt"]
    assert isinstance(first, list) and (len(first), len(second), len(chat)) == (1800, 1800, 128)
    assert first[:4] != second[:4]  # no prefix-cache hit between requests
    text = tokenizer.decode(first)
    assert len(text) > 3 * 1800  # real words, several characters a token (not bytes)
    assert PLANS["vllm"].tokenizer() is None  # the seeded models stay byte-level text


def test_kv_transfer_prompts_are_the_models_tokens() -> None:
    ids = prompt("smollm2", 512, "a")
    assert isinstance(ids, list) and len(ids) == 512
    assert prompt("smollm2", 512, "b") != ids
    text = prompt("tiny", 512, "a")
    assert isinstance(text, str) and len(text) == 512  # tiny: one token a character


def test_the_smollm2_plans_profiles_serve_it_on_the_small_plans_layout() -> None:
    plan, small = PLANS["smollm2"], PLANS["vllm"]
    for setup in ("standard", "disaggregated", "always"):
        ours = profiles.load(str(PROFILES / f"{getattr(plan, setup)}.yaml"))
        theirs = profiles.load(str(PROFILES / f"{getattr(small, setup)}.yaml"))
        assert (ours.model.name, ours.model.source) == ("smollm2", "smollm2")
        assert ours.routing.mode == theirs.routing.mode
        assert {n: (p.role, p.cores) for n, p in ours.pools.items()} == {
            n: (p.role, p.cores) for n, p in theirs.pools.items()
        }
