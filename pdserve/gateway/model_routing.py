"""Which model serves a request: the body's `model` to a served target, or OpenAI's 404.

A served name is what a client sends in `model` and `/v1/models` lists. Today each served name
is one model of the active profile, served by that model's own pools under its own routing
(`Profile.for_model`). A `Target` names the base model whose pools serve it and what rides on
them: the model alone, or a LoRA adapter over it (`kind="adapter"`: base model + adapter).

A rollout's name is resolved one step earlier (`gateway.rollouts`): the version chosen for the
request (stable or canary, each a served model or adapter) replaces the body's `model`, and
that served name is resolved here like any other. An alias a rollout adds is listed on
`/v1/models` as its stable version's entry under the alias's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pdserve.gateway.errors import OpenAIError
from pdserve.profile import ModelSpec, Profile

TargetKind = Literal["model", "adapter"]


@dataclass(frozen=True)
class Target:
    """What serves one served name."""

    name: str  # the served name the client sent
    profile: Profile  # the base model's view of the active profile: its pools and routing
    kind: TargetKind = "model"
    adapter: str | None = None  # a LoRA adapter over the base model

    @property
    def model(self) -> ModelSpec:
        """The base model: its tokenizer counts the prompt, its pools serve it."""
        return self.profile.model


def resolve(profile: Profile, requested: Any) -> Target:
    """The target of a request's `model` under `profile`; OpenAI's 404 when none serves it."""
    view = profile.for_model(requested) if isinstance(requested, str) else None
    base = adapter_parent(profile, requested) if view is None else None
    if base is not None:
        parent = profile.for_model(base)
        assert parent is not None  # an adapter's model is served
        return Target(name=requested, profile=parent, kind="adapter", adapter=requested)
    if view is None:
        raise OpenAIError(
            404,
            f"The model `{requested}` does not exist or you do not have access to it.",
            "model_not_found",
            "model",
        )
    return Target(name=requested, profile=view)


def model_cards(profile: Profile) -> list[dict[str, Any]]:
    """`/v1/models` entries, one per served name, in the profile's order."""
    cards = []
    for name in profile.served_models():
        spec = profile.model_spec(name)
        assert spec is not None  # a served name has a spec
        cards.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "pdserve",
                "max_model_len": spec.max_model_len,
            }
        )
        cards += [adapter_card(a.name, name, a.source, spec.max_model_len) for a in spec.adapters]
    return cards + alias_cards(profile, cards)


def alias_cards(profile: Profile, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A rollout's alias (a name no model or adapter has), listed as its stable version is."""
    by_id = {card["id"]: card for card in cards}
    return [{**by_id[r.stable], "id": r.model} for r in profile.rollouts if r.model not in by_id]


def adapter_parent(profile: Profile, requested: Any) -> str | None:
    """The served model an adapter named `requested` runs over; None if no adapter has it."""
    for name in profile.served_models():
        spec = profile.model_spec(name)
        if spec is not None and isinstance(requested, str) and spec.adapter(requested):
            return name
    return None


def adapter_card(name: str, parent: str, source: str, max_model_len: int) -> dict[str, Any]:
    """An adapter's `/v1/models` entry, as vLLM lists a LoRA: its base model as `parent`."""
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "pdserve",
        "max_model_len": max_model_len,
        "root": source,
        "parent": parent,
    }
