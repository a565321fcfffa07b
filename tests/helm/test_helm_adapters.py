"""Seeded LoRA adapters in the chart: each pod of a pool whose model has seeded adapters writes
them into the model cache before its vLLM server starts, --lora-modules names them there, and
the gateway names the on-demand ones at the same place when it loads one on a worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.gateway.adapters import WORKER_CACHE_ENV, AdapterLoader
from pdserve.helm.render import render_values_yaml
from tests.helm.conftest import Template, env_of, named, worker_container

pytestmark = pytest.mark.unit

PREFIX = "pd-pdserve"
MOUNT = "/models"


def with_adapters() -> profiles.Profile:
    """disaggregated (tiny on vLLM) with a start and a demand adapter, and a second model
    `tiny-b` without adapters on a `both` pool of its own."""
    raw: dict[str, Any] = profiles.load("disaggregated").model_dump(mode="json")
    raw["model"]["adapters"] = [
        {"name": "pirate", "source": "seeded:tiny/pirate", "load": "start"},
        {"name": "poet", "source": "seeded:tiny/poet@16", "load": "demand", "rank": 16},
    ]
    raw["models"] = [
        {**raw["model"], "name": "tiny-b", "adapters": [], "routing": {"mode": "standard"}}
    ]
    raw["pools"]["plain"] = {**raw["pools"]["decode"], "role": "both", "model": "tiny-b"}
    return profiles.parse(raw, "adapters")


def _modules(args: list[str]) -> dict[str, str]:
    if "--lora-modules" not in args:
        return {}
    after = args[args.index("--lora-modules") + 1 :]
    end = next((i for i, arg in enumerate(after) if arg.startswith("--")), len(after))
    return dict(pair.split("=", 1) for pair in after[:end])


def _init(deployment: dict[str, Any], name: str) -> dict[str, Any] | None:
    containers = deployment["spec"]["template"]["spec"].get("initContainers", [])
    return next((c for c in containers if c["name"] == name), None)


def _run_here(container: dict[str, Any], cache: Path) -> None:
    """The init container's command on this machine, the model cache at `cache`."""
    argv = [sys.executable if part == "python3" else part for part in container["command"]]
    env = {**os.environ, **env_of(container), "PDSERVE_CACHE_DIR": str(cache)}
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def objects(template: Template, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path = tmp_path_factory.mktemp("adapters") / "values.yaml"
    path.write_text(render_values_yaml(with_adapters()))
    return template(path)


def test_a_pool_with_seeded_adapters_writes_them_where_vllm_loads_them(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    for pool in ("prefill", "decode"):
        deployment = named(objects, "Deployment", f"{PREFIX}-{pool}")
        seed = _init(deployment, "seed-adapters")
        assert seed is not None, pool
        assert env_of(seed)["PDSERVE_CACHE_DIR"] == MOUNT
        mounts = {m["name"]: m for m in seed["volumeMounts"]}
        assert mounts["model-cache"]["mountPath"] == MOUNT
        assert not mounts["model-cache"].get("readOnly", False)
        modules = _modules(worker_container(deployment)["args"])
        assert list(modules) == ["pirate"]  # poet loads on demand
        assert modules["pirate"].startswith(f"{MOUNT}/adapters/")
        _run_here(seed, tmp_path / pool)
        written = tmp_path / pool / Path(modules["pirate"]).relative_to(MOUNT)
        assert (written / "adapter_config.json").is_file(), pool


def test_a_pool_without_adapters_seeds_none(objects: list[dict[str, Any]]) -> None:
    deployment = named(objects, "Deployment", f"{PREFIX}-plain")
    assert _init(deployment, "seed-adapters") is None
    assert _modules(worker_container(deployment)["args"]) == {}


def test_the_gateway_loads_a_demand_adapter_from_where_the_pods_wrote_it(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    worker_cache = env_of(container)[WORKER_CACHE_ENV]
    assert worker_cache == MOUNT
    profile = with_adapters()
    poet = profile.model.adapter("poet")
    assert poet is not None
    loader = AdapterLoader(upstream=None, worker_cache=worker_cache)  # type: ignore[arg-type]
    path = asyncio.run(loader._path_of(poet))
    seed = _init(named(objects, "Deployment", f"{PREFIX}-decode"), "seed-adapters")
    assert seed is not None
    _run_here(seed, tmp_path)
    assert (tmp_path / Path(path).relative_to(MOUNT) / "adapter_config.json").is_file()
