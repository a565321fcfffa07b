"""The real helm binary and the chart rendered for every shipped profile, once per session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.binary import helm_path
from pdserve.helm.render import render_values_yaml, with_model_path
from pdserve.helm.values import CHART_DIR
from pdserve.workers.models import REGISTRY_MODELS

SHIPPED = ["local", "standard", "disaggregated", "sim", "a100-l4"]
RELEASE = "pd"
NAMESPACE = "pdserve"
HELM_TIMEOUT_S = 120

Objects = list[dict[str, Any]]
Template = Callable[..., Objects]


def chart_profile(name: str) -> profiles.Profile:
    """A shipped profile as a platform team renders it: a registry model (local's smollm2, which
    `pdserve render` refuses) served from its checkpoint copied onto the model volume."""
    loaded = profiles.load(name)
    if loaded.model.source in REGISTRY_MODELS:
        return with_model_path(loaded, f"/models/{loaded.model.source}")
    return loaded


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_path()


@pytest.fixture(scope="session")
def values_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pdserve render` output of every shipped profile, as files for `helm -f`."""
    directory = tmp_path_factory.mktemp("values")
    for name in SHIPPED:
        (directory / f"{name}.yaml").write_text(render_values_yaml(chart_profile(name)))
    return directory


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False
    )


@pytest.fixture(scope="session")
def template(helm: Path) -> Template:
    """`helm template` with values files and --set pairs; the rendered objects."""

    def render(*values_files: Path, sets: tuple[str, ...] = ()) -> Objects:
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
        for path in values_files:
            args += ["-f", str(path)]
        for pair in sets:
            args += ["--set", pair]
        result = run_helm(helm, *args)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return render


@pytest.fixture(scope="session")
def rendered(template: Template, values_dir: Path) -> dict[str, Objects]:
    return {name: template(values_dir / f"{name}.yaml") for name in SHIPPED}


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
