"""Each pool's own engine settings reach its workers' vLLM command, on the path the local and
Ray actuators take (`pdserve worker --profile P --pool NAME`), checked by vLLM's own parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.actuators.local import worker_command
from pdserve.cli import build_parser
from pdserve.workers.cli import worker_spec
from pdserve.workers.vllm_command import GiB, WorkerCommand, WorkerSpec, vllm_command
from tests.support.vllm_parser import vllm_server_parser

pytestmark = pytest.mark.unit

PROFILE = {
    "name": "tuned",
    "engine": {
        "max_num_seqs": 64,
        "kv_cache_gib": 1,
        "extra_args": ["--seed", "1"],
        "env": {"VLLM_LOGGING_LEVEL": "INFO", "SHARED": "profile"},
    },
    "pools": {
        "prefill": {
            "role": "prefill",
            "engine": {
                "max_num_seqs": 8,
                "max_num_batched_tokens": 8192,
                "kv_cache_gib": 2,
                "extra_args": ["--seed", "7"],
                "env": {"SHARED": "prefill"},
            },
        },
        "decode": {"role": "decode", "engine": {"max_num_seqs": 16}},
    },
}


@pytest.fixture(scope="module")
def vllm_parse() -> Callable[[list[str]], argparse.Namespace]:
    parse_args = vllm_server_parser()
    return lambda argv: parse_args(argv[3:])  # after `python -m <server module>`


@pytest.fixture
def profile_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(PROFILE))
    return path


def actuator_worker(profile_path: Path, pool: str) -> WorkerCommand:
    """What a local (or Ray) replica of `pool` runs: the actuator's `pdserve worker` argv,
    parsed by pdserve's CLI into the spec the worker launches vLLM with."""
    argv = worker_command(profile_path, pool, port=18200, side_channel_port=18600, core=0)
    assert argv[1:4] == ["-m", "pdserve.cli", "worker"]
    args = build_parser().parse_args(argv[3:])
    return vllm_command(worker_spec(args, profiles.load(str(profile_path))))


def test_each_pool_runs_its_own_engine_settings(profile_path: Path, vllm_parse) -> None:
    prefill = vllm_parse(actuator_worker(profile_path, "prefill").argv)
    decode = vllm_parse(actuator_worker(profile_path, "decode").argv)
    assert (prefill.max_num_seqs, prefill.max_num_batched_tokens) == (8, 8192)
    assert prefill.kv_cache_memory_bytes == 2 * GiB
    assert prefill.seed == 7  # the pool's --seed follows the profile's, and vLLM takes the last
    assert (decode.max_num_seqs, decode.max_num_batched_tokens) == (16, None)
    assert decode.kv_cache_memory_bytes == 1 * GiB  # inherited from the profile's engine
    assert decode.seed == 1


def test_each_pool_gets_its_own_environment(profile_path: Path) -> None:
    prefill = actuator_worker(profile_path, "prefill").env
    decode = actuator_worker(profile_path, "decode").env
    assert prefill["SHARED"] == "prefill" and decode["SHARED"] == "profile"
    assert prefill["VLLM_LOGGING_LEVEL"] == decode["VLLM_LOGGING_LEVEL"] == "INFO"
    # pdserve's own variables are still there and still its own
    assert prefill["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "18600"
    assert prefill["VLLM_NO_USAGE_STATS"] == "1"


def test_gpu_pools_get_their_own_memory_utilization(vllm_parse) -> None:
    loaded = profiles.load("a100-l4")
    flags = {}
    for pool in loaded.pools:
        spec = WorkerSpec.from_profile(loaded, pool, port=8000, side_channel_port=5600)
        flags[pool] = vllm_parse(vllm_command(spec).argv)
    assert flags["prefill"].gpu_memory_utilization == 0.9
    assert flags["decode"].gpu_memory_utilization == 0.95
    assert (flags["prefill"].max_num_batched_tokens, flags["decode"].max_num_batched_tokens) == (
        16384,
        2048,
    )
    assert (flags["prefill"].max_num_seqs, flags["decode"].max_num_seqs) == (32, 40)


def test_a_simulated_pool_sizes_itself_by_its_own_engine(profile_path: Path) -> None:
    """The simulated worker (`pdserve worker --engine sim --profile P --pool X`) batches and
    sizes its KV by the pool's engine, as the vLLM one does."""
    from pdserve.workers.sim.cli import settings_from

    sized = {}
    for pool in ("prefill", "decode"):
        argv = ["worker", "--engine", "sim", "--profile", str(profile_path), "--pool", pool]
        settings = settings_from(build_parser().parse_args(argv), environ={})
        sized[pool] = (
            settings.max_num_seqs,
            settings.max_num_batched_tokens,
            settings.kv_cache_gib,
        )
    assert sized == {"prefill": (8, 8192, 2), "decode": (16, None, 1)}
