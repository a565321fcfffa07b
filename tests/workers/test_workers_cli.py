"""`pdserve worker` flags -> WorkerSpec, in profile and explicit mode (nothing launched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.cli import build_parser, main
from pdserve.workers.checkpoint import CHECKPOINT_VERSION
from pdserve.workers.cli import worker_spec
from pdserve.workers.models import serve_model

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    return tmp_path


def spec_for(argv: list[str]):
    args = build_parser().parse_args(["worker", *argv])
    loaded = profiles.load(args.profile) if args.profile else None
    return worker_spec(args, loaded)


def test_profile_mode_takes_the_pool_from_the_profile(cache: Path) -> None:
    # as the local actuator launches a worker of `pdserve up --model tiny`: the profile, serving
    # the seeded tiny model, written to a file
    tiny_local = serve_model(profiles.load("local"), "tiny").model_dump(mode="json")
    path = cache / "local-tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_local))
    spec = spec_for(["--profile", str(path), "--pool", "decode", "--port", "18150",
                     "--side-channel-port", "18550", "--cores", "1"])  # fmt: skip
    assert (spec.role, spec.port, spec.side_channel_port, spec.cores) == (
        "decode",
        18150,
        18550,
        (1,),
    )
    assert spec.kv_connector and spec.kv_load_failure_policy == "recompute"
    assert spec.model == str(cache / f"tiny-v{CHECKPOINT_VERSION}")  # written on first use
    assert (Path(spec.model) / "model.safetensors").is_file()


def test_explicit_mode_defaults(cache: Path) -> None:
    spec = spec_for(["--role", "prefill", "--port", "18151", "--cores", "0-1"])
    assert spec.role == "prefill" and spec.cores == (0, 1)
    assert spec.kv_connector and spec.side_channel_port is not None  # a free port was picked
    assert (spec.kv_load_failure_policy, spec.block_lease_s, spec.enforce_eager) == (
        "recompute",
        30.0,
        True,
    )


@pytest.mark.parametrize(
    ("flags", "connector"),
    [([], False), (["--kv-connector"], True), (["--role", "decode"], True)],
)
def test_unified_worker_has_no_connector_unless_asked(flags: list[str], connector: bool) -> None:
    spec = spec_for(["--role", "both", "--port", "18152", *flags])
    assert spec.kv_connector is connector


def test_explicit_flags_reach_the_spec(tmp_path: Path) -> None:
    spec = spec_for(["--role", "decode", "--port", "18153", "--kv-load-failure-policy", "fail",
                     "--block-lease-s", "4", "--no-enforce-eager", "--max-model-len", "1024",
                     "--vllm-arg=--seed=3"])  # fmt: skip
    assert (spec.kv_load_failure_policy, spec.block_lease_s) == ("fail", 4.0)
    assert (spec.enforce_eager, spec.max_model_len, spec.extra_args) == (False, 1024, ("--seed=3",))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "18154"], "--role"),
        (["--role", "both"], "--port is required"),
        (["--profile", "local", "--pool", "nope", "--port", "1"], "--pool must name"),
        (["--role", "both", "--port", "1", "--model", "/no/such/dir"], "/no/such/dir"),
    ],
)
def test_bad_invocations_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", *argv]) == 2
    assert message in capsys.readouterr().err
