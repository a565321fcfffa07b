"""Each pool's own engine settings in the Helm values (one block per pool) and in the profile
the chart hands the gateway, so its admission caps each pool at that pool's max_num_seqs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import render_values
from pdserve.helm.values import HelmValues

from .conftest import RELEASE, Objects, Template, named, worker_container

pytestmark = pytest.mark.integration

PREFIX = f"{RELEASE}-pdserve"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_each_pool_block_carries_its_engine_and_its_flags() -> None:
    loaded = profiles.load("a100-l4")
    values = render_values(loaded)
    for name, pool in loaded.pools.items():
        block = values["pools"][name]
        assert block["engine"] == pool.engine.model_dump(mode="json")
        engine = loaded.engine_for(name)
        args = block["vllm"]["args"]
        assert flag(args, "--max-num-seqs") == str(engine.max_num_seqs)
        assert flag(args, "--max-num-batched-tokens") == str(engine.max_num_batched_tokens)
        assert flag(args, "--gpu-memory-utilization") == str(engine.gpu_memory_utilization)
    prefill, decode = (values["pools"][p]["vllm"]["args"] for p in ("prefill", "decode"))
    assert flag(prefill, "--max-num-seqs") != flag(decode, "--max-num-seqs")


def test_the_values_give_the_gateway_each_pools_engine() -> None:
    loaded = profiles.load("a100-l4")
    gateway_profile = HelmValues.model_validate(render_values(loaded)).to_profile("pdserve")
    for name in loaded.pools:
        assert gateway_profile.engine_for(name) == loaded.engine_for(name)


def test_a_pool_env_reaches_its_pod_only(tmp_path: Path, template: Template) -> None:
    loaded = profiles.load("a100-l4")
    loaded.pools["decode"].engine.env = {"VLLM_ATTENTION_BACKEND": "FLASHINFER"}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(render_values(loaded)))
    objects = template(path)
    decode = worker_container(named(objects, "Deployment", f"{PREFIX}-decode"))
    prefill = worker_container(named(objects, "Deployment", f"{PREFIX}-prefill"))
    assert {"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"} in decode["env"]
    assert all(e["name"] != "VLLM_ATTENTION_BACKEND" for e in prefill["env"])


def test_the_charts_gateway_profile_keeps_each_pools_engine(rendered: dict[str, Objects]) -> None:
    config = named(rendered["a100-l4"], "ConfigMap", f"{PREFIX}-gateway-profile")
    gateway_profile = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    loaded = profiles.load("a100-l4")
    for name in loaded.pools:
        assert gateway_profile.engine_for(name) == loaded.engine_for(name)
