"""A profile's rollouts and adapters in the Helm values: the gateway in the cluster loads its
profile from the chart's ConfigMap, so what the profile serves (its models, each model's LoRA
adapters, its rollouts) must come through `pdserve render` and `helm template` whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import render_values, render_values_yaml
from pdserve.helm.values import HelmValues
from tests.helm.conftest import Template, named

pytestmark = pytest.mark.unit

PREFIX = "pd-pdserve"


def rolled_out() -> profiles.Profile:
    """a100-l4 with two adapters on its model (one loaded at start, one on demand), a second
    model `tiny-v2` on pools of its own, and two rollouts under aliases: the model onto tiny-v2
    on a schedule, and the first adapter onto the second."""
    raw: dict[str, Any] = profiles.load("a100-l4").model_dump(mode="json")
    raw["model"]["max_loras"] = 2
    raw["model"]["adapters"] = [
        {"name": "pirate", "source": "seeded:tiny/pirate", "load": "start"},
        {"name": "pirate-v2", "source": "seeded:tiny/pirate-v2", "load": "demand", "rank": 16},
    ]
    raw["models"] = [{**raw["model"], "name": "tiny-v2", "adapters": []}]
    for pool in ("prefill", "decode"):
        raw["pools"][f"{pool}-v2"] = {**raw["pools"][pool], "model": "tiny-v2"}
    first = raw["model"]["name"]
    raw["rollouts"] = [
        {"model": "latest", "stable": first, "canary": "tiny-v2", "steps": [5, 50, 100],
         "step_every_s": 600, "rollback": {"min_requests": 40, "max_ttft_p99_ratio": 3}},
        {"model": "pirate-latest", "stable": "pirate", "canary": "pirate-v2",
         "canary_percent": 5, "client_header": "x-team"},
    ]  # fmt: skip
    return profiles.parse(raw, "rolled-out")


def _serving(profile: profiles.Profile) -> dict[str, Any]:
    """What the gateway serves, beyond pools and actuator."""
    return profile.model_dump(mode="json", include={"model", "models", "rollouts"})


def test_the_values_carry_the_rollouts_and_adapters() -> None:
    profile = rolled_out()
    values = render_values(profile)
    assert values["profile"]["rollouts"] == _serving(profile)["rollouts"]
    rebuilt = HelmValues.model_validate(values).to_profile("serving")
    assert _serving(rebuilt) == _serving(profile)


def test_the_gateways_configmap_serves_the_rollouts(template: Template, tmp_path: Path) -> None:
    profile = rolled_out()
    path = tmp_path / "rolled-out.yaml"
    path.write_text(render_values_yaml(profile))
    config = named(template(path), "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    assert _serving(loaded) == _serving(profile)
    alias = loaded.rollout("pirate-latest")
    assert alias is not None and (alias.stable, alias.canary) == ("pirate", "pirate-v2")
    assert alias.client_header == "x-team"
