"""Resolving a request's `model`: each served name to its model's view, else OpenAI's 404."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.gateway.errors import OpenAIError
from pdserve.gateway.model_routing import model_cards, resolve
from tests.support import PROFILES

pytestmark = pytest.mark.unit


def two() -> profiles.Profile:
    return profiles.load(str(PROFILES / "gw-models-two.yaml"))


def test_each_served_name_resolves_to_its_models_pools() -> None:
    profile = two()
    for name, decode, threshold in (("tiny", "decode", 64), ("tiny-b", "decode-b", 1000)):
        target = resolve(profile, name)
        assert (target.name, target.kind, target.model.name) == (name, "model", name)
        assert target.profile.decode_pool == decode
        assert target.profile.routing.prefill_threshold == threshold
        assert target.profile.name == profile.name  # responses still name the active profile


@pytest.mark.parametrize("requested", ["nope", "TINY", "", 3, None, ["tiny"]])
def test_anything_else_is_model_not_found(requested: Any) -> None:
    with pytest.raises(OpenAIError) as info:
        resolve(two(), requested)
    assert (info.value.status, info.value.code, info.value.param) == (
        404,
        "model_not_found",
        "model",
    )


def test_every_model_is_listed_with_its_context() -> None:
    profile = two().model_copy()
    cards = model_cards(profile)
    assert [(c["id"], c["object"], c["max_model_len"]) for c in cards] == [
        ("tiny", "model", 4096),
        ("tiny-b", "model", 4096),
    ]
    single = profiles.load("sim")
    assert [c["id"] for c in model_cards(single)] == [single.model.name]
