"""Rollouts in a profile: versions are served names (models or adapters), distinct; the rollout's
name is the stable's own or an alias nothing else has; a schedule rises and has its period."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve import profile as profiles
from tests.support import PROFILES

pytestmark = pytest.mark.unit

MODEL = {"name": "tiny", "adapters": [{"name": "pirate", "source": "seeded:tiny/pirate"}]}
MODELS = [{"name": "tiny-v2"}]
POOLS = {"a": {"role": "both", "model": "tiny"}, "b": {"role": "both", "model": "tiny-v2"}}


def parse(*rollouts: dict[str, Any]) -> profiles.Profile:
    raw = {
        "model": MODEL,
        "models": MODELS,
        "pools": POOLS,
        "routing": {"mode": "standard"},
        "rollouts": list(rollouts),
    }
    return profiles.parse(raw, "t.yaml", "t")


def error_of(*rollouts: dict[str, Any]) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        parse(*rollouts)
    return str(info.value)


def test_a_rollout_of_two_checkpoints_or_of_a_model_and_its_adapter() -> None:
    profile = parse(
        {"model": "tiny", "stable": "tiny", "canary": "tiny-v2", "canary_percent": 5},
        {"model": "chat", "stable": "tiny", "canary": "pirate", "client_header": "X-User"},
    )
    assert profile.rollout("tiny") is not None and profile.rollout("tiny-v2") is None
    chat = profile.rollout("chat")
    assert chat is not None and chat.client_header == "x-user"  # as ASGI names headers
    assert chat.canary_percent == 0 and chat.rollback.window_s == 60  # the defaults


def test_versions_are_distinct_served_names() -> None:
    assert "canary 'tiny-v3' is no served model or adapter" in error_of(
        {"model": "tiny", "stable": "tiny", "canary": "tiny-v3"}
    )
    assert "stable and canary are both 'tiny'" in error_of(
        {"model": "tiny", "stable": "tiny", "canary": "tiny"}
    )


def test_the_name_is_the_stables_own_or_an_alias_nothing_else_has() -> None:
    taken = error_of({"model": "pirate", "stable": "tiny", "canary": "tiny-v2"})
    assert "the name is an adapter of tiny" in taken
    assert "the name is the model tiny-v2" in error_of(
        {"model": "tiny-v2", "stable": "tiny", "canary": "tiny-v2"}
    )
    twice = {"model": "chat", "stable": "tiny", "canary": "tiny-v2"}
    assert "['chat'] rolled out twice" in error_of(twice, twice)


def test_a_schedule_rises_and_has_its_period() -> None:
    base = {"model": "tiny", "stable": "tiny", "canary": "tiny-v2"}
    assert "steps must rise" in error_of({**base, "steps": [50, 5], "step_every_s": 1})
    assert "steps need step_every_s" in error_of({**base, "steps": [5, 50]})
    assert "steps must be in (0, 100]" in error_of({**base, "steps": [0], "step_every_s": 1})
    assert "canary_percent" in error_of({**base, "canary_percent": 101})


def test_the_test_profile_loads_and_the_schema_describes_rollouts() -> None:
    profile = profiles.load(str(PROFILES / "gw-rollout.yaml"))
    assert [r.model for r in profile.rollouts] == ["tiny"]
    schema = profiles.json_schema()["$defs"]
    assert all(f.get("description") for f in schema["RolloutSpec"]["properties"].values())
    assert "max_ttft_p99_ratio" in schema["RollbackSpec"]["properties"]
