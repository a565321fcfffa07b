"""A pool's own engine settings: validated strictly, merged over the profile's engine."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve import profile as profiles

pytestmark = pytest.mark.unit


def data(prefill_engine: dict[str, Any] | None = None, **engine: Any) -> dict[str, Any]:
    pools: dict[str, Any] = {"prefill": {"role": "prefill"}, "decode": {"role": "decode"}}
    if prefill_engine is not None:
        pools["prefill"]["engine"] = prefill_engine
    return {"engine": {"max_num_seqs": 64, **engine}, "pools": pools}


def parse(raw: dict[str, Any]) -> profiles.Profile:
    return profiles.parse(raw, "t.yaml", "t")


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        parse(raw)
    return str(info.value)


def test_a_pool_key_replaces_the_profiles_and_the_others_inherit_it() -> None:
    loaded = parse(
        data(
            {"max_num_seqs": 8, "max_num_batched_tokens": 16384, "kv_cache_gib": 2.5},
            gpu_memory_utilization=0.8,
        )
    )
    prefill, decode = loaded.engine_for("prefill"), loaded.engine_for("decode")
    assert (prefill.max_num_seqs, prefill.max_num_batched_tokens, prefill.kv_cache_gib) == (
        8,
        16384,
        2.5,
    )
    assert prefill.gpu_memory_utilization == 0.8  # not set by the pool: the profile's
    assert (decode.max_num_seqs, decode.max_num_batched_tokens, decode.kv_cache_gib) == (
        64,
        None,
        1.0,
    )


def test_extra_args_follow_the_profiles_and_env_lies_over_it() -> None:
    loaded = parse(
        data(
            {"extra_args": ["--seed", "9"], "env": {"A": "pool", "POOL_ONLY": "1"}},
            extra_args=["--seed", "1", "--disable-log-requests"],
            env={"A": "profile", "B": "profile"},
        )
    )
    prefill = loaded.engine_for("prefill")
    # the pool's --seed comes last, so vLLM's parser takes it
    assert prefill.extra_args == ["--seed", "1", "--disable-log-requests", "--seed", "9"]
    assert prefill.env == {"A": "pool", "B": "profile", "POOL_ONLY": "1"}
    decode = loaded.engine_for("decode")
    assert decode.extra_args == ["--seed", "1", "--disable-log-requests"]
    assert decode.env == {"A": "profile", "B": "profile"}


def test_engine_for_leaves_the_profile_alone() -> None:
    loaded = parse(data({"max_num_seqs": 8, "extra_args": ["--seed", "9"]}, extra_args=["-x"]))
    loaded.engine_for("prefill")
    assert (loaded.engine.max_num_seqs, loaded.engine.extra_args) == (64, ["-x"])


@pytest.mark.parametrize(
    ("pool_engine", "key", "says"),
    [
        ({"max_num_seqs": 0}, "pools.prefill.engine.max_num_seqs", "greater than or equal to 1"),
        ({"gpu_memory_utilization": 1.5}, "pools.prefill.engine.gpu_memory_utilization", "1"),
        ({"kv_cache_gib": 0}, "pools.prefill.engine.kv_cache_gib", "greater than 0"),
        ({"max_num_batched_tokens": -1}, "pools.prefill.engine.max_num_batched_tokens", "1"),
        ({"max_num_sequences": 8}, "pools.prefill.engine.max_num_sequences", "unknown key"),
        ({"max_num_seqs": "many"}, "pools.prefill.engine.max_num_seqs", "integer"),
        ({"env": {"BAD-NAME": "1"}}, "pools.prefill.engine.env", "pattern"),
        ({"env": {"X": 1}}, "pools.prefill.engine.env.X", "string"),
        (
            {"extra_args": ["--max-num-seqs", "8"]},
            "pools.prefill.engine.extra_args",
            "set max_num_seqs instead",
        ),
        (
            {"extra_args": ["--gpu-memory-utilization=0.5"]},
            "pools.prefill.engine.extra_args",
            "set gpu_memory_utilization instead",
        ),
        (
            {"env": {"VLLM_NIXL_SIDE_CHANNEL_PORT": "5600"}},
            "pools.prefill.engine.env",
            "composed by pdserve",
        ),
    ],
)
def test_a_bad_pool_engine_names_the_file_the_key_and_the_fix(
    pool_engine: dict[str, Any], key: str, says: str
) -> None:
    message = error_of(data(pool_engine))
    assert message.startswith("t.yaml: ")
    line = next((line for line in message.splitlines() if line.strip().startswith(key)), "")
    assert line, message
    assert says in line, message


def test_the_profiles_own_extra_args_and_env_are_checked_too() -> None:
    assert "set max_num_batched_tokens instead" in error_of(
        data(extra_args=["--max-num-batched-tokens", "4096"])
    )
    assert "composed by pdserve" in error_of(data(env={"UCX_TLS": "tcp"}))


def test_a100_l4_tunes_its_two_accelerators_apart() -> None:
    loaded = profiles.load("a100-l4")
    prefill, decode = loaded.engine_for("prefill"), loaded.engine_for("decode")
    assert prefill.max_num_batched_tokens is not None and decode.max_num_batched_tokens is not None
    assert prefill.max_num_batched_tokens > decode.max_num_batched_tokens  # A100: big budget
    assert decode.gpu_memory_utilization > prefill.gpu_memory_utilization  # L4: more of 24 GB
    assert decode.max_num_seqs != prefill.max_num_seqs
    # every token of a max-length prompt fits one prefill step
    assert prefill.max_num_batched_tokens >= loaded.model.max_model_len
