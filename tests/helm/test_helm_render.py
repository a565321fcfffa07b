"""`render_values`: the Helm values that reproduce a serving profile, one block per pool."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pdserve import accelerators
from pdserve import profile as profiles
from pdserve.helm.render import placement, render_values, render_values_yaml, vllm_server
from pdserve.helm.values import CHART_DIR, HelmValues, Vllm, values_schema
from pdserve.workers.models import serve_model
from pdserve.workers.vllm_command import WorkerSpec, vllm_command
from tests.helm.conftest import chart_profile

pytestmark = pytest.mark.unit

SHIPPED = ["local", "standard", "disaggregated", "sim", "a100-l4"]


@pytest.mark.parametrize("name", SHIPPED)
def test_values_reproduce_the_profile(name: str) -> None:
    original = chart_profile(name)
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


def test_placement_and_host_resources_come_from_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    l4 = accelerators.ACCELERATORS["nvidia-l4"]
    moved = replace(
        l4,
        product_labels=("NVIDIA-L4-TEST",),
        host=accelerators.HostShare(cpu="7", memory_request_gib=11, memory_limit_gib=13),
    )
    monkeypatch.setitem(accelerators.ACCELERATORS, "nvidia-l4", moved)
    values = render_values(profiles.load("a100-l4"))
    assert values["accelerators"]["nvidia-l4"] == {
        "nodeLabel": "nvidia.com/gpu.product",
        "nodeLabelValues": ["NVIDIA-L4-TEST"],
        "gpuResource": "nvidia.com/gpu",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    assert values["pools"]["decode"]["resources"] == {
        "requests": {"cpu": "7", "memory": "11Gi"},
        "limits": {"memory": "13Gi"},
    }
    assert placement(accelerators.CPU) == {}  # a CPU pool goes anywhere


@pytest.mark.parametrize("name", ["local", "standard", "disaggregated", "a100-l4"])
def test_each_pool_carries_the_vllm_server_that_vllm_command_composes(name: str) -> None:
    loaded = chart_profile(name)
    values = render_values(loaded)
    for pool, block in values["pools"].items():
        spec = WorkerSpec.from_profile(loaded, pool, port=8000, side_channel_port=5600)
        model = block["vllm"]["args"][block["vllm"]["args"].index("--model") + 1]
        expected = vllm_command(
            replace(spec, host="0.0.0.0", side_channel_host="$(POD_IP)", model=model,
                    python="python3")
        )  # fmt: skip
        assert block["vllm"]["command"] + block["vllm"]["args"] == expected.argv
        assert block["vllm"]["env"] == [{"name": k, "value": v} for k, v in expected.env.items()]
    assert not any(block["vllm"] is None for block in values["pools"].values())


def test_seeded_model_loads_from_the_cache_and_a_path_as_given() -> None:
    # `pdserve up --model tiny`: the shipped local profile serving the seeded tiny model
    local = render_values(serve_model(profiles.load("local"), "tiny"))
    args = local["pools"]["decode"]["vllm"]["args"]
    assert args[args.index("--model") + 1] == "/models/tiny"
    assert local["modelCache"]["seed"] == ["tiny"]
    gpu = render_values(profiles.load("a100-l4"))
    args = gpu["pools"]["decode"]["vllm"]["args"]
    assert args[args.index("--model") + 1] == profiles.load("a100-l4").model.source
    assert gpu["modelCache"]["seed"] == []


def test_simulated_pools_carry_no_vllm_server() -> None:
    values = render_values(profiles.load("sim"))
    assert all(block["vllm"] is None for block in values["pools"].values())


def test_the_servers_ports_are_the_charts() -> None:
    values = render_values(
        profiles.load("disaggregated"), Vllm(port=9100, nixlSideChannelPort=9200)
    )
    for block in values["pools"].values():
        args = block["vllm"]["args"]
        assert args[args.index("--port") + 1] == "9100"
        env = {var["name"]: var["value"] for var in block["vllm"]["env"]}
        assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "9200"
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "$(POD_IP)"
    assert values["vllm"]["port"] == 9100


def test_a_vllm_pool_without_its_server_is_an_error() -> None:
    base = render_values(profiles.load("a100-l4"))
    bare = {**base, "pools": {**base["pools"], "decode": {**base["pools"]["decode"], "vllm": None}}}
    with pytest.raises(ValidationError, match=r"pools \['decode'\] have no `vllm` server"):
        HelmValues.model_validate(bare)


def test_yaml_is_the_values_with_a_header_naming_the_profile() -> None:
    loaded = profiles.load("a100-l4")
    text = render_values_yaml(loaded)
    assert text.startswith("# Helm values for the pdserve chart, rendered from the serving profile")
    assert "helm install pdserve manifests/helm/pdserve" in text
    assert yaml.safe_load(text) == render_values(loaded)


def test_values_yaml_defaults_are_what_render_writes_for_their_profile() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    values = HelmValues.model_validate(defaults)
    profile = values.to_profile("default")
    assert profile.routing.mode is profiles.RoutingMode.standard
    used = {pool.accelerator for pool in values.pools.values()}
    assert defaults["accelerators"] == {name: placement(accelerators.get(name)) for name in used}, (
        "values.yaml's accelerators are the registry's (pdserve/accelerators.py)"
    )
    for name, pool in values.pools.items():
        server = vllm_server(profile, name, values.vllm, values.modelCache)
        assert pool.vllm == server, f"values.yaml pools.{name}.vllm: paste {server.model_dump()}"


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
    tpu = {**base, "pools": {**base["pools"], "decode": {**base["pools"]["decode"]}}}
    tpu["pools"]["decode"]["accelerator"] = "tpu-v5e"
    with pytest.raises(ValidationError, match="unknown accelerator 'tpu-v5e'; use one of cpu"):
        HelmValues.model_validate(tpu)


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
