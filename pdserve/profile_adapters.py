"""LoRA adapters of a served model, as a profile names them.

A model may carry adapters: each a served name of its own (what a client sends in `model`),
over the model's pools, loaded into vLLM at start (`--lora-modules`) or on demand through
vLLM's runtime API (`/v1/load_lora_adapter`), at most `max_loras` per replica at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from pdserve.profile_pools import Strict


class AdapterSpec(Strict):
    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Served name of the adapter: what clients send in `model`.",
    )
    source: str = Field(
        description="`seeded:<base>/<name>[@<rank>]` (a seeded adapter of a seeded checkpoint "
        "pdserve writes to its cache) or a local directory in PEFT's layout."
    )
    rank: int = Field(
        8, ge=1, le=512, description="LoRA rank (vLLM's --max-lora-rank fits the largest)."
    )
    load: Literal["start", "demand"] = Field(
        "start",
        description="start: every replica loads it at start (--lora-modules); demand: the "
        "gateway loads it on a replica when a request needs it (evicting the least recently "
        "used idle adapter when the replica holds max_loras).",
    )


def check_adapters(model: str, adapters: Sequence[AdapterSpec], max_loras: int) -> None:
    """A model's adapters: distinct names, not the model's own; raises ValueError naming them."""
    names = [a.name for a in adapters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"model {model}: adapters {repeated} named twice; give each its own name")
    if model in names:
        raise ValueError(f"model {model}: an adapter may not have the model's own name")
    at_start = sum(a.load == "start" for a in adapters)
    if at_start > max_loras:
        raise ValueError(
            f"model {model}: {at_start} adapters load at start but max_loras is {max_loras}: "
            "raise max_loras or set load: demand on some"
        )


def lora_rank(adapters: Sequence[AdapterSpec]) -> int:
    """vLLM's --max-lora-rank: the largest adapter's rank (vLLM accepts 1, 8, 16, 32, ...)."""
    largest = max((a.rank for a in adapters), default=8)
    return next(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= largest)


def check_names_across(models: dict[str, Sequence[AdapterSpec]]) -> None:
    """Every served name (each model's, each adapter's) names one thing across the profile."""
    owners: dict[str, str] = {}
    for model, adapters in models.items():
        for adapter in adapters:
            if adapter.name in models or adapter.name in owners:
                other = owners.get(adapter.name, adapter.name)
                raise ValueError(
                    f"model {model}: adapter {adapter.name!r} is also served as {other!r}; "
                    "every model and adapter needs its own name"
                )
            owners[adapter.name] = f"an adapter of {model}"
