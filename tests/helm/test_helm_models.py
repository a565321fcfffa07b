"""Several models in the Helm values: one block per pool, each carrying its model, each pool's
vLLM server serving that model, and the chart's gateway profile serving every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import CheckpointNotInChart, render_values, render_values_yaml
from pdserve.helm.values import HelmValues
from tests.helm.conftest import Template, named, worker_container

pytestmark = pytest.mark.unit

PREFIX = "pd-pdserve"


def two_models() -> profiles.Profile:
    """a100-l4 serving a second model, `tiny-b` (the tiny checkpoint under another name, with
    its own threshold), on pools of its own."""
    raw: dict[str, Any] = profiles.load("a100-l4").model_dump(mode="json")
    raw["models"] = [{**raw["model"], "name": "tiny-b", "routing": {"prefill_threshold": 4096}}]
    for pool in ("prefill", "decode"):
        raw["pools"][f"{pool}-b"] = {**raw["pools"][pool], "model": "tiny-b"}
    return profiles.parse(raw, "two-models")


def _served(args: list[str]) -> str:
    return args[args.index("--served-model-name") + 1]


def test_each_pool_block_carries_its_model_and_serves_it() -> None:
    profile = two_models()
    values = render_values(profile)
    assert set(values["pools"]) == {"prefill", "decode", "prefill-b", "decode-b"}
    models = {name: block["model"] for name, block in values["pools"].items()}
    assert models == {"prefill": None, "decode": None, "prefill-b": "tiny-b", "decode-b": "tiny-b"}
    served = {name: _served(block["vllm"]["args"]) for name, block in values["pools"].items()}
    name = profile.model.name
    assert served == {"prefill": name, "decode": name, "prefill-b": "tiny-b", "decode-b": "tiny-b"}
    rebuilt = HelmValues.model_validate(values).to_profile("serving")
    assert rebuilt.served_models() == [name, "tiny-b"]
    b = rebuilt.for_model("tiny-b")
    assert b is not None and (b.decode_pool, b.prefill_pool) == ("decode-b", "prefill-b")
    assert b.routing.prefill_threshold == 4096


def test_a_pool_naming_an_unserved_model_is_refused() -> None:
    values = render_values(two_models())
    values["profile"]["models"] = []
    with pytest.raises(ValueError, match="pools.prefill-b.model: no served model named 'tiny-b'"):
        HelmValues.model_validate(values)


def test_the_chart_runs_each_models_pools_and_a_gateway_serving_both(
    template: Template, tmp_path: Path
) -> None:
    path = tmp_path / "two-models.yaml"
    path.write_text(render_values_yaml(two_models()))
    objects = template(path)
    first = two_models().model.name
    for pool, model in (("decode", first), ("decode-b", "tiny-b")):
        worker = worker_container(named(objects, "Deployment", f"{PREFIX}-{pool}"))
        assert _served(worker["args"]) == model, pool
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    assert loaded.served_models() == [first, "tiny-b"]
    assert {n: loaded.model_of(n) for n in loaded.pools} == {
        "prefill": first,
        "decode": first,
        "prefill-b": "tiny-b",
        "decode-b": "tiny-b",
    }


def with_model(base: str, name: str, source: str) -> profiles.Profile:
    """The shipped profile `base` serving a second model `name` (from `source`) on a copy of
    its pools, `<pool>-2`."""
    raw: dict[str, Any] = profiles.load(base).model_dump(mode="json")
    raw["models"] = [{**raw["model"], "name": name, "source": source}]
    for pool in list(raw["pools"]):
        raw["pools"][f"{pool}-2"] = {**raw["pools"][pool], "model": name}
    return profiles.parse(raw, f"{base}-and-{name}")


def _pod(objects: list[dict[str, Any]], pool: str) -> dict[str, Any]:
    return dict(named(objects, "Deployment", f"{PREFIX}-{pool}")["spec"]["template"]["spec"])


def _model_arg(pod: dict[str, Any]) -> str:
    args = next(c for c in pod["containers"] if c["name"] == "worker")["args"]
    return str(args[args.index("--model") + 1])


def test_each_pools_pods_seed_the_checkpoint_that_pool_serves(
    template: Template, tmp_path: Path
) -> None:
    path = tmp_path / "tiny-and-small.yaml"
    path.write_text(render_values_yaml(with_model("disaggregated", "small", "small")))
    objects = template(path)
    for pool, source in (("prefill", "tiny"), ("decode", "tiny"), ("decode-2", "small")):
        pod = _pod(objects, pool)
        [init] = pod["initContainers"]
        assert init["command"] == ["pdserve", "model", source, "--out", f"/models/{source}"], pool
        assert _model_arg(pod) == f"/models/{source}", pool  # never a bare name (a hub id)
    assert _model_arg(_pod(objects, "prefill-2")) == "/models/small"


def test_a_seeded_model_beside_one_from_the_cache(template: Template, tmp_path: Path) -> None:
    profile = with_model("a100-l4", "tiny", "tiny")
    values = render_values(profile)
    assert (values["modelCache"]["seed"], values["modelCache"]["readOnly"]) == (["tiny"], False)
    path = tmp_path / "llama-and-tiny.yaml"
    path.write_text(render_values_yaml(profile))
    objects = template(path)
    cached = profile.model.source  # /models/Llama-3.1-8B-Instruct, copied there beforehand
    for pool in ("prefill", "decode"):
        pod = _pod(objects, pool)
        assert "initContainers" not in pod and _model_arg(pod) == cached, pool
    for pool in ("prefill-2", "decode-2"):
        pod = _pod(objects, pool)
        [init] = pod["initContainers"]
        assert init["command"] == ["pdserve", "model", "tiny", "--out", "/models/tiny"], pool
        assert _model_arg(pod) == "/models/tiny", pool
    # the gateway counts the cached model's prompts with its tokenizer, from the cache
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in gateway["containers"][0]["volumeMounts"]}
    assert mounts["model-cache"]["mountPath"] == "/models"


def test_one_seed_name_as_values_files_before_several_models_wrote_it(
    template: Template, values_dir: Path
) -> None:
    objects = template(values_dir / "standard.yaml", sets=("modelCache.seed=tiny",))
    [init] = _pod(objects, "decode")["initContainers"]
    assert init["command"] == ["pdserve", "model", "tiny", "--out", "/models/tiny"]
    values = yaml.safe_load((values_dir / "standard.yaml").read_text())
    for old, read in (("tiny", ["tiny"]), (None, [])):
        values["modelCache"]["seed"] = old
        assert HelmValues.model_validate(values).modelCache.seed == read


def test_a_further_registry_model_is_refused_naming_its_own_source() -> None:
    # --model-path rewrites the main model's source only, so it is not the fix for this one
    with pytest.raises(CheckpointNotInChart) as caught:
        render_values(with_model("disaggregated", "chat", "smollm2"))
    message = str(caught.value)
    assert "'chat' under `models:`" in message and "/models/smollm2" in message
    assert "render with `--model-path" not in message
    # with its checkpoint on the model volume it renders, loaded from there, nothing seeded
    loaded = with_model("disaggregated", "chat", "/models/smollm2")
    values = render_values(loaded)
    assert values["modelCache"]["seed"] == ["tiny"]
    args = values["pools"]["decode-2"]["vllm"]["args"]
    assert args[args.index("--model") + 1] == "/models/smollm2"
