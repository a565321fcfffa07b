"""A registry model (local's smollm2, converted by `pdserve model smollm2`) in the chart: no pod
can convert it and vLLM would fetch the bare name from the Hugging Face hub, so `pdserve render`
refuses it with how to provide the checkpoint, and `--model-path` serves the copy on the model
volume (checked with the real helm binary)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import CheckpointNotInChart, render_values

from .conftest import Template, named, of_kind, worker_container

pytestmark = pytest.mark.unit

CHECKPOINT = "/models/smollm2"
PREFIX = "pd-pdserve"


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pdserve.cli", "render", "--profile", "local", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_a_registry_model_is_refused_with_how_to_provide_it() -> None:
    with pytest.raises(CheckpointNotInChart, match=r"`pdserve model smollm2`.*--model-path"):
        render_values(profiles.load("local"))
    result = _render()
    assert result.returncode == 2 and result.stdout == ""
    assert "Hugging Face hub" in result.stderr and "--model-path /models/smollm2" in result.stderr
    assert _render("--model-path", "models/smollm2").returncode == 2  # a pod needs a full path


def test_the_checkpoint_on_the_model_volume_is_what_the_pods_load(
    template: Template, tmp_path: Path
) -> None:
    values = tmp_path / "local.yaml"
    result = _render("--model-path", CHECKPOINT, "-o", str(values))
    assert result.returncode == 0, result.stderr
    cache = yaml.safe_load(values.read_text())["modelCache"]
    assert (cache["readOnly"], cache["seed"]) == (True, [])  # pods only read it
    objects = template(values)
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert not pod.get("initContainers"), deployment["metadata"]["name"]  # nothing to seed
    for pool in ("prefill", "decode"):
        deployment = named(objects, "Deployment", f"{PREFIX}-{pool}")
        args = worker_container(deployment)["args"]
        assert args[args.index("--model") + 1] == CHECKPOINT
        mounts = worker_container(deployment)["volumeMounts"]
        assert any(m["mountPath"] == "/models" and m.get("readOnly") for m in mounts), mounts
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    served = yaml.safe_load(config["data"]["profile.yaml"])["model"]
    assert (served["name"], served["source"]) == ("smollm2", CHECKPOINT)  # its tokenizer too
