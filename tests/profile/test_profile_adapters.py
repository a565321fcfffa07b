"""LoRA adapters in a profile: validation with errors that name the fix, the vLLM flags and
environment a model with adapters gives its workers (checked by vLLM's own server parser), and
the same adapters on a simulated worker."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.cli import build_parser
from pdserve.workers.sim.cli import settings_from
from pdserve.workers.vllm_command import WorkerSpec, vllm_command
from tests.support import PROFILES
from tests.support.vllm_parser import vllm_server_parser

pytestmark = pytest.mark.unit

ADAPTERS = PROFILES / "gw-adapters.yaml"
POOLS = {"decode": {"role": "both"}}


def error_of(model: dict[str, Any], **more: Any) -> str:
    raw = {"model": model, "pools": POOLS, "routing": {"mode": "standard"}, **more}
    with pytest.raises(profiles.ProfileError) as info:
        profiles.parse(raw, "t.yaml", "t")
    return str(info.value)


def adapter(name: str, load: str = "start", rank: int = 8) -> dict[str, Any]:
    return {"name": name, "source": f"seeded:tiny/{name}", "load": load, "rank": rank}


def test_adapter_names_must_be_distinct_and_fit_max_loras() -> None:
    twice = error_of({"adapters": [adapter("a"), adapter("a", "demand")]})
    assert "adapters ['a'] named twice" in twice
    assert "may not have the model's own name" in error_of({"adapters": [adapter("tiny")]})
    crowded = error_of({"max_loras": 1, "adapters": [adapter("a"), adapter("b")]})
    assert "2 adapters load at start but max_loras is 1" in crowded
    other = error_of(
        {"adapters": [adapter("b")]},
        models=[{"name": "b", "source": "tiny"}],
        pools={**POOLS, "b": {"role": "both", "model": "b"}},
    )
    assert "adapter 'b' is also served as 'b'" in other
    assert "pattern" in error_of({"adapters": [adapter("bad name")]})


def test_a_model_with_adapters_gives_vllm_lora_flags_and_runtime_updating() -> None:
    profile = profiles.load(str(ADAPTERS))
    command = vllm_command(
        WorkerSpec.from_profile(profile, "decode", port=8100, side_channel_port=5600)
    )
    parsed = vllm_server_parser()(command.argv[3:])
    assert parsed.enable_lora is True
    assert parsed.max_loras == 2 and parsed.max_lora_rank == 8
    (module,) = parsed.lora_modules  # only the adapter loaded at start
    assert (module.name, module.path) == ("pirate", "seeded:tiny/pirate")  # the CLI resolves it
    assert command.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_largest_rank_sets_max_lora_rank_and_no_adapters_no_flags() -> None:
    profile = profiles.parse(
        {"model": {"adapters": [adapter("a", rank=4), adapter("b", "demand", rank=12)]},
         "pools": POOLS, "routing": {"mode": "standard"}}, "t.yaml", "t"
    )  # fmt: skip
    argv = vllm_command(WorkerSpec.from_profile(profile, "decode", port=8100)).argv
    assert vllm_server_parser()(argv[3:]).max_lora_rank == 16  # vLLM's next size up from 12
    plain = profiles.parse({"pools": POOLS, "routing": {"mode": "standard"}}, "t.yaml", "t")
    command = vllm_command(WorkerSpec.from_profile(plain, "decode", port=8100))
    assert "--enable-lora" not in command.argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in command.env


def test_extra_args_may_not_set_the_lora_flags() -> None:
    message = error_of({}, engine={"extra_args": ["--max-loras=4"]})
    assert "set model.max_loras instead" in message


def test_a_simulated_worker_takes_the_same_adapters() -> None:
    args = build_parser().parse_args(
        ["worker", "--engine", "sim", "--profile", str(ADAPTERS), "--pool", "prefill"]
    )
    settings = settings_from(args, environ={})
    assert settings.max_loras == 2
    assert settings.lora_modules == (("pirate", "seeded:tiny/pirate"),)
    explicit = build_parser().parse_args(
        ["worker", "--engine", "sim", "--role", "both", "--port", "8100", "--enable-lora",
         "--max-loras", "3", "--lora-modules", "a=/x/a", "b=/x/b"]
    )  # fmt: skip
    settings = settings_from(explicit, environ={})
    assert settings.max_loras == 3
    assert settings.lora_modules == (("a", "/x/a"), ("b", "/x/b"))
