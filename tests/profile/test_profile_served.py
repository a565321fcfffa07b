"""Several served models in one profile: validation, each model's view (its pools and routing),
what each pool's workers serve, and worker-spec keys that survive adding a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.cli import build_parser
from pdserve.pools.workerspec import worker_spec_key
from pdserve.workers.sim.cli import settings_from
from pdserve.workers.vllm_command import WorkerSpec, vllm_command
from tests.support import PROFILES

pytestmark = pytest.mark.unit

TWO = PROFILES / "gw-models-two.yaml"


def parse(raw: dict[str, Any]) -> profiles.Profile:
    return profiles.parse(raw, "t.yaml", "t")


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        parse(raw)
    return str(info.value)


def two_models(**b_routing: Any) -> dict[str, Any]:
    return {
        "model": {"name": "a"},
        "models": [{"name": "b", "source": "small", "routing": b_routing}],
        "routing": {"prefill_threshold": 64},
        "pools": {
            "prefill": {"role": "prefill"},
            "decode": {"role": "decode"},
            "prefill-b": {"role": "prefill", "model": "b"},
            "decode-b": {"role": "decode", "model": "b"},
        },
    }


def test_each_model_has_its_own_pools_and_routing() -> None:
    loaded = parse(two_models(prefill_threshold=1000))
    assert loaded.served_models() == ["a", "b"]
    a, b = loaded.for_model("a"), loaded.for_model("b")
    assert a is not None and b is not None
    assert (a.decode_pool, a.prefill_pool, list(a.pools)) == (
        "decode",
        "prefill",
        ["prefill", "decode"],
    )
    assert (b.decode_pool, b.prefill_pool, list(b.pools)) == (
        "decode-b",
        "prefill-b",
        ["prefill-b", "decode-b"],
    )
    assert (a.routing.prefill_threshold, b.routing.prefill_threshold) == (64, 1000)
    assert (a.model.source, b.model.source) == ("tiny", "small")
    assert loaded.routing_of("b").picker == loaded.routing.picker  # the rest is the profile's
    assert loaded.for_model("c") is None
    assert loaded.for_model("b") is b  # built once


def test_a_one_model_profile_is_its_own_view() -> None:
    for name, _ in profiles.list_profiles():
        loaded = profiles.load(name)
        assert loaded.for_model(loaded.model.name) is loaded, name
        assert loaded.served_models() == [loaded.model.name]


def test_models_can_route_differently() -> None:
    raw = two_models(mode="standard")
    assert "model b: its pools: routing.mode is standard" in error_of(raw)
    del raw["pools"]["prefill-b"]
    b = parse(raw).for_model("b")
    assert b is not None and b.prefill_pool is None and b.routing.mode.value == "standard"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["pools"]["decode-b"].update(model="z"),
            "pools.decode-b.model: no served model named 'z'",
        ),
        (
            lambda r: r["pools"].pop("decode-b"),
            "model b: its pools: need exactly one decode or both pool, found 0",
        ),
        (
            lambda r: r["pools"].pop("prefill-b"),
            "model b: its pools: routing.mode is disaggregated but there is no prefill pool",
        ),
        (lambda r: r["models"].append({"name": "a"}), "models: ['a'] served twice"),
        (
            lambda r: r["models"][0]["routing"].update(prefill_threshold=-1),
            "models.0.routing.prefill_threshold",
        ),
    ],
)
def test_bad_models_name_the_key(change: Any, message: str) -> None:
    raw = two_models()
    change(raw)
    assert message in error_of(raw)


def test_each_pool_serves_its_own_model(tmp_path: Path) -> None:
    loaded = parse(two_models())
    served = {}
    for pool in loaded.pools:
        argv = vllm_command(
            WorkerSpec.from_profile(loaded, pool, port=8000, side_channel_port=5600)
        ).argv
        served[pool] = (
            argv[argv.index("--model") + 1],
            argv[argv.index("--served-model-name") + 1],
        )
    assert served == {
        "prefill": ("tiny", "a"),
        "decode": ("tiny", "a"),
        "prefill-b": ("small", "b"),
        "decode-b": ("small", "b"),
    }
    names = {}
    for pool in ("decode", "decode-b"):
        argv = ["worker", "--engine", "sim", "--profile", str(TWO), "--pool", pool]
        names[pool] = settings_from(build_parser().parse_args(argv), environ={}).served_model
    assert names == {"decode": "tiny", "decode-b": "tiny-b"}


def test_adding_a_model_keeps_the_other_models_worker_specs() -> None:
    one = profiles.load(str(PROFILES / "gw-models-one.yaml"))
    two = profiles.load(str(TWO))
    for pool in one.pools:
        assert worker_spec_key(one, pool) == worker_spec_key(two, pool), pool
    # the same pool settings serving another model is another worker
    assert worker_spec_key(two, "decode") != worker_spec_key(two, "decode-b")
