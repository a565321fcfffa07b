"""`render_values`: the Helm values that reproduce a serving profile, one block per pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pdserve import profile as profiles
from pdserve.helm_values import CHART_DIR, HelmValues, values_schema
from pdserve.render import ACCELERATORS, render_values, render_values_yaml

pytestmark = pytest.mark.unit

SHIPPED = ["local", "standard", "disaggregated", "sim", "a100-l4"]


@pytest.mark.parametrize("name", SHIPPED)
def test_values_reproduce_the_profile(name: str) -> None:
    original = profiles.load(name)
    values = HelmValues.model_validate(render_values(original))
    rebuilt = values.to_profile(namespace="serving", prefix="pd")
    for key in ("name", "description", "model", "engine", "routing", "kv_transfer"):
        assert getattr(rebuilt, key) == getattr(original, key), key
    assert set(rebuilt.pools) == set(original.pools)
    for pool, spec in original.pools.items():
        got = rebuilt.pools[pool]
        assert (got.role, got.accelerator, got.tensor_parallel_size) == (
            spec.role,
            spec.accelerator,
            spec.tensor_parallel_size,
        )
        assert got.replicas == spec.replicas
        assert got.scaling == spec.scaling
    assert rebuilt.actuator.kind is profiles.ActuatorKind.kubernetes
    assert rebuilt.actuator.kubernetes.namespace == "serving"
    assert rebuilt.actuator.kubernetes.deployment_prefix == "pd"
    assert rebuilt.gateway.host == "0.0.0.0"


def test_a100_l4_blocks_per_pool_with_their_accelerators() -> None:
    values = render_values(profiles.load("a100-l4"))
    assert list(values["pools"]) == ["prefill", "decode"]
    prefill, decode = values["pools"]["prefill"], values["pools"]["decode"]
    assert (prefill["role"], prefill["accelerator"]) == ("prefill", "nvidia-a100-80gb")
    assert (decode["role"], decode["accelerator"]) == ("decode", "nvidia-l4")
    assert prefill["replicas"] == {"min": 0, "max": 8, "initial": 1}
    assert decode["scaling"]["target_concurrency"] == 24
    assert set(values["accelerators"]) == {"nvidia-a100-80gb", "nvidia-l4"}
    assert values["autoscaling"]["mode"] == "pdserve"
    assert values["modelCache"]["readOnly"] is True  # a pre-filled cache
    assert values["profile"]["kv_transfer"]["ucx_tls"] == "cuda_copy,cuda_ipc,rc,tcp"


def test_standard_renders_a_single_unified_pool() -> None:
    values = render_values(profiles.load("standard"))
    assert list(values["pools"]) == ["decode"]
    assert values["pools"]["decode"]["role"] == "both"
    assert values["modelCache"]["readOnly"] is False  # the tiny checkpoint is seeded into it


def test_host_resources_grow_with_tensor_parallel_ranks() -> None:
    data = profiles.load("a100-l4").model_dump(mode="json")
    data["pools"]["prefill"]["tensor_parallel_size"] = 2
    values = render_values(profiles.parse(data, "test"))
    # 10 CPUs and 96 GiB per rank x 2 ranks
    assert values["pools"]["prefill"]["resources"] == {
        "requests": {"cpu": "20", "memory": "192Gi"},
        "limits": {"memory": "256Gi"},
    }
    assert values["pools"]["prefill"]["tensorParallelSize"] == 2


def test_unknown_accelerator_is_an_error_that_names_the_pool() -> None:
    data = profiles.load("a100-l4").model_dump(mode="json")
    data["pools"]["decode"]["accelerator"] = "tpu-v5e"
    with pytest.raises(profiles.ProfileError, match=r"pools\.decode\.accelerator: 'tpu-v5e'"):
        render_values(profiles.parse(data, "test"))


def test_yaml_is_the_values_with_a_header_naming_the_profile() -> None:
    loaded = profiles.load("a100-l4")
    text = render_values_yaml(loaded)
    assert text.startswith("# Helm values for the pdserve chart, rendered from the serving profile")
    assert "helm install pdserve manifests/helm/pdserve" in text
    assert yaml.safe_load(text) == render_values(loaded)


def test_values_yaml_defaults_are_valid_and_share_the_accelerator_table() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    values = HelmValues.model_validate(defaults)
    assert defaults["accelerators"] == ACCELERATORS
    assert values.to_profile("default").routing.mode is profiles.RoutingMode.standard


def test_values_models_reject_typos_and_cross_pool_mistakes() -> None:
    base = render_values(profiles.load("a100-l4"))
    typo = {
        **base,
        "pools": {**base["pools"], "decode": {**base["pools"]["decode"], "replicsa": 1}},
    }
    with pytest.raises(ValidationError, match="replicsa"):
        HelmValues.model_validate(typo)
    no_prefill = {**base, "pools": {"decode": base["pools"]["decode"]}}
    with pytest.raises(ValidationError, match="no prefill pool"):
        HelmValues.model_validate(no_prefill)
    spanning = {
        **base,
        "pools": {**base["pools"], "prefill": {**base["pools"]["prefill"], "nodes": 2}},
    }
    with pytest.raises(ValidationError, match="keda or none"):
        HelmValues.model_validate(spanning)
    HelmValues.model_validate({**spanning, "autoscaling": {"mode": "keda"}})
    missing = {**base, "accelerators": {"nvidia-l4": base["accelerators"]["nvidia-l4"]}}
    with pytest.raises(ValidationError, match="nvidia-a100-80gb"):
        HelmValues.model_validate(missing)


def test_schema_closes_every_object_and_names_pools_by_dns_label() -> None:
    schema = values_schema()
    assert schema["additionalProperties"] is False
    pools = schema["properties"]["pools"]
    assert pools["additionalProperties"] is False
    [pattern] = pools["patternProperties"]
    assert pattern.startswith("^[a-z0-9]")
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition:
            assert definition.get("additionalProperties") is False, name


def test_render_command_writes_the_values_file(tmp_path: Path) -> None:
    out = tmp_path / "values-a100-l4.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "render", "--profile", "a100-l4", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(out.read_text()) == render_values(profiles.load("a100-l4"))
