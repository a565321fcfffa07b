"""Every shipped profile validates; broken profiles fail with an error that names the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pdserve import accelerators
from pdserve import profile as profiles

pytestmark = pytest.mark.unit

SHIPPED = ["local", "standard", "disaggregated", "sim", "a100-l4"]


def _local() -> dict:
    return yaml.safe_load((profiles.profiles_dir() / "local.yaml").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_validates(name: str) -> None:
    loaded = profiles.load(name)
    assert loaded.name == name
    assert loaded.description, "profile list shows a one-line description"
    assert loaded.decode_pool in loaded.pools


def test_local_is_real_vllm_on_cpu_disaggregated_with_a_core_each() -> None:
    local = profiles.load("local")
    assert local.engine.kind is profiles.EngineKind.vllm
    assert local.engine.device is profiles.Device.cpu
    assert local.routing.mode is profiles.RoutingMode.disaggregated
    assert local.pools["prefill"].replicas.start == 1
    assert local.pools["decode"].replicas.start == 1
    assert local.pools["prefill"].cores and local.pools["decode"].cores
    assert local.pools["prefill"].cores[0] != local.pools["decode"].cores[0]


def test_standard_has_one_pool_and_no_prefill() -> None:
    standard = profiles.load("standard")
    assert standard.prefill_pool is None
    assert list(standard.pools) == [standard.decode_pool]


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value


def _delete(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[last]


BROKEN = [
    # (what, mutation, the key path the error must name, a phrase of the fix)
    (
        "unknown key",
        lambda d: _set(d, "routing.prefil_threshold", 3),
        "routing.prefil_threshold",
        "unknown key",
    ),
    (
        "min > max",
        lambda d: _set(d, "pools.decode.replicas", {"min": 3, "max": 2}),
        "pools.decode.replicas",
        "min (3) > max (2)",
    ),
    (
        "negative threshold",
        lambda d: _set(d, "routing.prefill_threshold", -1),
        "routing.prefill_threshold",
        "greater than or equal to 0",
    ),
    (
        "disaggregated without prefill pool",
        lambda d: _delete(d, "pools.prefill"),
        "(top level)",
        "no prefill pool",
    ),
    ("unknown engine", lambda d: _set(d, "engine.kind", "tgi"), "engine.kind", "'vllm' or 'sim'"),
    (
        "wrong type",
        lambda d: _set(d, "pools.decode.replicas.max", "many"),
        "pools.decode.replicas.max",
        "valid integer",
    ),
    (
        "unknown pool key",
        lambda d: _set(d, "pools.decode.replica", {"min": 1}),
        "pools.decode.replica",
        "unknown key",
    ),
    (
        "initial outside range",
        lambda d: _set(d, "pools.decode.replicas", {"min": 1, "max": 2, "initial": 5}),
        "pools.decode.replicas",
        "initial (5) outside",
    ),
    (
        "bad failure policy",
        lambda d: _set(d, "kv_transfer.kv_load_failure_policy", "retry"),
        "kv_transfer.kv_load_failure_policy",
        "'recompute' or 'fail'",
    ),
    (
        "standard with prefill pool",
        lambda d: _set(d, "routing.mode", "standard"),
        "(top level)",
        "remove the prefill pool",
    ),
    (
        "unknown accelerator",
        lambda d: _set(d, "pools.decode.accelerator", "tpu-v5e"),
        "pools.decode.accelerator",
        "unknown accelerator 'tpu-v5e'; use one of cpu, nvidia-a100-80gb, nvidia-l4",
    ),
    (
        "misspelt sim fault",
        lambda d: _set(d, "pools.prefill.sim_faults", {"cold_strat_s": 2}),
        "pools.prefill.sim_faults.cold_strat_s",
        "unknown key; remove it or check its spelling",
    ),
    (
        "negative sim fault",
        lambda d: _set(d, "pools.prefill.sim_faults", {"prefill_slow_s": -1}),
        "pools.prefill.sim_faults.prefill_slow_s",
        "greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(("what", "mutate", "key", "fix"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_profile_names_file_key_and_fix(
    tmp_path: Path, what: str, mutate, key: str, fix: str
) -> None:
    data = copy.deepcopy(_local())
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(profiles.ProfileError) as caught:
        profiles.load(str(path))
    message = str(caught.value)
    assert str(path) in message
    assert f"  {key}: " in message, message
    assert fix in message, message


def test_unknown_profile_name_lists_known_ones() -> None:
    with pytest.raises(profiles.ProfileError, match="known profiles: .*local"):
        profiles.load("no-such-profile")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(profiles.ProfileError, match="a profile is a mapping"):
        profiles.load(str(path))


def test_schema_is_generated_from_the_models() -> None:
    schema = profiles.json_schema()
    assert schema["additionalProperties"] is False
    assert "pools" in schema["required"]
    assert "prefill_threshold" in schema["$defs"]["RoutingSpec"]["properties"]


def test_pool_lookup_by_role() -> None:
    local = profiles.load("local")
    assert local.prefill_pool == "prefill"
    assert local.pool_for(profiles.Role.decode) == "decode"


def test_accelerator_names_are_the_registrys(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = profiles.json_schema()["$defs"]["PoolSpec"]["properties"]["accelerator"]
    assert schema["enum"] == list(accelerators.ACCELERATORS)
    data = _local()
    data["pools"]["decode"]["accelerator"] = "nvidia-l4"
    assert profiles.parse(data, "test").pools["decode"].accelerator == "nvidia-l4"
    monkeypatch.delitem(accelerators.ACCELERATORS, "nvidia-l4")
    with pytest.raises(profiles.ProfileError, match="unknown accelerator 'nvidia-l4'"):
        profiles.parse(data, "test")


def test_sim_faults_keep_the_keys_profiles_use() -> None:
    data = _local()
    data["pools"]["decode"]["sim_faults"] = {"cold_start_s": 1.5, "refuse": 1, "hang": 0}
    faults = profiles.parse(data, "test").pools["decode"].sim_faults
    assert faults.model_dump(exclude_none=True) == {"cold_start_s": 1.5, "hang": 0, "refuse": 1}
    assert (
        profiles.parse(_local(), "test").pools["decode"].sim_faults.model_dump(exclude_none=True)
        == {}
    )  # no fault unless asked
