"""Serving profiles: the pydantic models of a profile YAML, loading, validation and listing.

A profile names the model and engine, how requests are routed, each pool with its scaling
limits, how KV moves between pools, the actuator that runs the replicas, and the gateway's own
settings. Each section's models live in a sibling module (profile_pools, profile_served,
profile_engine, profile_gateway, profile_actuators, profile_adapters, profile_rollouts) and the
names other layers use are importable from here too. The profile layer imports nothing of
pdserve but the accelerator registry and where the shipped profiles are (package_data), and
every other layer reads these models.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from pdserve import package_data
from pdserve.profile_actuators import ActuatorKind as ActuatorKind
from pdserve.profile_actuators import ActuatorSpec
from pdserve.profile_actuators import KubernetesActuatorSpec as KubernetesActuatorSpec
from pdserve.profile_actuators import RayActuatorSpec as RayActuatorSpec
from pdserve.profile_actuators import StaticActuatorSpec as StaticActuatorSpec
from pdserve.profile_adapters import check_names_across
from pdserve.profile_engine import Device as Device
from pdserve.profile_engine import EngineKind as EngineKind
from pdserve.profile_engine import EngineSpec, KVTransferSpec
from pdserve.profile_gateway import GatewaySpec, RoutingSpec
from pdserve.profile_gateway import Picker as Picker
from pdserve.profile_gateway import RoutingMode as RoutingMode
from pdserve.profile_pools import ACCELERATOR_NAMES as ACCELERATOR_NAMES
from pdserve.profile_pools import AcceleratorName as AcceleratorName
from pdserve.profile_pools import AdmissionSpec as AdmissionSpec
from pdserve.profile_pools import NonNegativeSeconds as NonNegativeSeconds
from pdserve.profile_pools import PoolEngine as PoolEngine
from pdserve.profile_pools import PoolSpec, Role, Strict
from pdserve.profile_pools import Replicas as Replicas
from pdserve.profile_pools import ScalingSpec as ScalingSpec
from pdserve.profile_pools import SimFaults as SimFaults
from pdserve.profile_rollouts import RolloutSpec, check_rollouts
from pdserve.profile_served import ModelRouting as ModelRouting
from pdserve.profile_served import ModelSpec as ModelSpec
from pdserve.profile_served import ServedModel, check_roles, check_served

PROFILES_DIR = package_data.profiles_dir()
"""Where the shipped profiles live (package data; `profiles/` of a source checkout);
`PDSERVE_PROFILES_DIR` overrides."""


class Profile(Strict):
    """A whole serving profile, as in profiles/*.yaml."""

    name: str = Field(description="Profile name (defaults to the file stem).")
    description: str = Field("", description="One line shown by `pdserve profile list`.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    models: list[ServedModel] = Field(
        default_factory=list,
        description="Further models the gateway serves beside `model`, each with its own pools "
        "(`pools.<name>.model` names it) and its own `routing` keys over the profile's.",
    )
    engine: EngineSpec = Field(default_factory=EngineSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    pools: dict[str, PoolSpec] = Field(description="Pools by name: prefill, decode, ...")
    kv_transfer: KVTransferSpec = Field(default_factory=KVTransferSpec)
    actuator: ActuatorSpec = Field(default_factory=ActuatorSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    rollouts: list[RolloutSpec] = Field(
        default_factory=list,
        description="Gradual rollouts: requests for a served name split between a stable and a "
        "canary version (served models or adapters), stepped and rolled back by the gateway.",
    )

    @model_validator(mode="after")
    def _pools_fit_mode(self) -> Profile:
        names = self.served_models()
        check_names_across({m.name: m.adapters for m in [self.model, *self.models]})
        check_rollouts(self.rollouts, self.served_names())
        pool_models = {name: pool.model for name, pool in self.pools.items()}
        for model, pools in check_served(names, pool_models, self.model.name).items():
            roles = [self.pools[p].role for p in pools]
            check_roles(model, model == self.model.name, roles, self.routing_of(model).mode.value)
        return self

    def served_models(self) -> list[str]:
        """The names clients may send in `model`: the profile's model, then `models`."""
        return [self.model.name, *(m.name for m in self.models)]

    def served_names(self) -> dict[str, str]:
        """Every name a model or an adapter is served under, with what it is."""
        names: dict[str, str] = {}
        for spec in [self.model, *self.models]:
            names[spec.name] = f"the model {spec.name}"
            names.update({a.name: f"an adapter of {spec.name}" for a in spec.adapters})
        return names

    def rollout(self, name: str) -> RolloutSpec | None:
        """The rollout of the served name `name`, if any."""
        return next((r for r in self.rollouts if r.model == name), None)

    def model_of(self, pool_name: str) -> str:
        """The name of the model a pool serves."""
        return self.pools[pool_name].model or self.model.name

    def model_for(self, pool_name: str) -> ModelSpec:
        """The model spec a pool's workers load and serve."""
        spec = self.model_spec(self.model_of(pool_name))
        assert spec is not None  # guaranteed by _pools_fit_mode
        return spec

    def model_spec(self, name: str) -> ModelSpec | None:
        if name == self.model.name:
            return self.model
        return next((m.spec() for m in self.models if m.name == name), None)

    def routing_of(self, model: str) -> RoutingSpec:
        """A model's routing: the profile's, with that model's own keys over it."""
        served = next((m for m in self.models if m.name == model), None)
        if served is None or not served.routing.overrides():
            return self.routing
        return RoutingSpec.model_validate(
            {**self.routing.model_dump(), **served.routing.overrides()}
        )

    def for_model(self, name: str) -> Profile | None:
        """One model's view: that model, its pools and its routing (None: not served). A
        profile of one model is its own view; views are built once per profile."""
        return self.model_views.get(name)

    @cached_property
    def model_views(self) -> dict[str, Profile]:
        if not self.models:
            return {self.model.name: self}
        return {name: self._view(name) for name in self.served_models()}

    def _view(self, name: str) -> Profile:
        pools = {n: p for n, p in self.pools.items() if self.model_of(n) == name}
        update = {"model": self.model_spec(name), "routing": self.routing_of(name)}
        view = self.model_copy(update={**update, "pools": pools, "models": []})
        view.__dict__["model_views"] = {name: view}  # a copy carries its parent's views
        return view

    def pool_for(self, role: Role, model: str | None = None) -> str | None:
        """Name of the pool with that role serving `model` (default the profile's model;
        `decode` also finds a `both` pool)."""
        wanted = {role, Role.both} if role is Role.decode else {role}
        served = model or self.model.name
        return next(
            (n for n, p in self.pools.items() if p.role in wanted and self.model_of(n) == served),
            None,
        )

    def engine_for(self, pool_name: str) -> EngineSpec:
        """The engine settings of one pool's workers: the profile's `engine` with the pool's
        own `engine` keys over it (its extra_args after the profile's, its env over it)."""
        pool = self.pools[pool_name].engine
        return EngineSpec.model_validate(
            {
                **self.engine.model_dump(),
                **pool.overrides(),
                "extra_args": [*self.engine.extra_args, *pool.extra_args],
                "env": {**self.engine.env, **pool.env},
            }
        )

    @property
    def decode_pool(self) -> str:
        name = self.pool_for(Role.decode)
        assert name is not None  # guaranteed by _pools_fit_mode
        return name

    @property
    def prefill_pool(self) -> str | None:
        return self.pool_for(Role.prefill)


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file, the key and the fix."""


def profiles_dir() -> Path:
    import os

    return Path(os.environ.get("PDSERVE_PROFILES_DIR", PROFILES_DIR))


def resolve(name_or_path: str) -> Path:
    """A profile by file stem in the profiles directory, or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ProfileError(f"{candidate}: no such profile file")
        return candidate
    path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profiles_dir().glob("*.yaml"))) or "none"
        raise ProfileError(f"no profile named {name_or_path!r}; known profiles: {known}")
    return path


def parse(data: Any, source: str, default_name: str = "profile") -> Profile:
    """Validate already-loaded YAML/JSON data; errors name `source` and each bad key."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of keys, got {type(data).__name__}")
    data = {"name": default_name, **data}
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_errors(source, exc)) from None


def load(name_or_path: str) -> Profile:
    path = resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path), default_name=path.stem)


def format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} error(s) in the profile"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {key}: {_explain(err)}")
    return "\n".join(lines)


def _explain(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling (`pdserve profile schema` lists keys)"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and kind != "value_error":
        message += f" (got {err['input']!r})"
    return message


def list_profiles() -> list[tuple[str, str]]:
    """(name, description) of every profile file in the profiles directory."""
    rows = []
    for path in sorted(profiles_dir().glob("*.yaml")):
        try:
            rows.append((path.stem, load(str(path)).description))
        except ProfileError as exc:
            rows.append((path.stem, f"INVALID: {str(exc).splitlines()[-1].strip()}"))
    return rows


def json_schema() -> dict[str, Any]:
    return Profile.model_json_schema()
