"""Composing a vLLM worker's command: checked by vLLM's own server argument parser."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import pytest

from pdserve import profile as profiles
from pdserve.workers.vllm_command import (
    CPU_BLOCK_SIZE,
    WorkerSpec,
    omp_threads_bind,
    vllm_command,
)
from tests.support.vllm_parser import vllm_server_parser

pytestmark = pytest.mark.unit

MODULE = "vllm.entrypoints.openai.api_server"


@pytest.fixture(scope="module")
def vllm_parse() -> Callable[[list[str]], argparse.Namespace]:
    """vLLM's server parser over a whole pdserve argv (`python -m <server module> ...`)."""
    parse_args = vllm_server_parser()

    def parse(argv: list[str]) -> argparse.Namespace:
        assert argv[1:3] == ["-m", MODULE]
        return parse_args(argv[3:])

    return parse


def spec(**overrides: object) -> WorkerSpec:
    base: dict[str, object] = {
        "role": "prefill",
        "model": "/models/tiny",
        "port": 18101,
        "side_channel_port": 18501,
        "cores": (0,),
    }
    return WorkerSpec(**{**base, **overrides})  # type: ignore[arg-type]


def test_prefill_on_cpu_parses_with_vllms_parser(vllm_parse) -> None:
    command = vllm_command(spec(block_lease_s=2.5, kv_load_failure_policy="fail", kv_cache_gib=0.5))
    args = vllm_parse(command.argv)
    assert (args.model, args.served_model_name, args.host, args.port) == (
        "/models/tiny",
        ["tiny"],
        "127.0.0.1",
        18101,
    )
    assert (args.dtype, args.max_model_len, args.block_size) == ("float32", 2048, CPU_BLOCK_SIZE)
    assert args.kv_cache_memory_bytes == 512 * 1024 * 1024
    assert args.tensor_parallel_size == 1
    assert args.enforce_eager is True
    kv = args.kv_transfer_config
    assert (kv.kv_connector, kv.kv_role, kv.kv_buffer_device) == ("NixlConnector", "kv_both", "cpu")
    assert kv.kv_load_failure_policy == "fail"
    assert kv.get_from_extra_config("kv_lease_duration", None) == 3  # ceil(2.5)
    assert command.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
    assert command.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "18501"
    assert command.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert "UCX_TLS" not in command.env


def test_cuda_decode_with_tensor_parallelism(vllm_parse) -> None:
    command = vllm_command(
        spec(
            role="decode",
            device="cuda",
            kv_buffer_device="cuda",
            dtype="bfloat16",
            tensor_parallel_size=2,
            gpu_memory_utilization=0.8,
            max_num_batched_tokens=4096,
            enforce_eager=False,
            ucx_tls="cuda_copy,cuda_ipc,rc,tcp",
            cores=(),
        )
    )
    args = vllm_parse(command.argv)
    assert args.tensor_parallel_size == 2
    assert args.gpu_memory_utilization == 0.8
    assert args.max_num_batched_tokens == 4096
    assert args.block_size is None and args.kv_cache_memory_bytes is None
    assert not args.enforce_eager
    assert args.kv_transfer_config.kv_buffer_device == "cuda"
    assert command.env["UCX_TLS"] == "cuda_copy,cuda_ipc,rc,tcp"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in command.env


def test_unified_worker_has_no_connector_and_needs_no_side_channel(vllm_parse) -> None:
    command = vllm_command(spec(role="both", kv_connector=False, side_channel_port=None))
    args = vllm_parse(command.argv)
    assert args.kv_transfer_config is None
    assert not any(key.startswith("VLLM_NIXL") for key in command.env)


def test_connector_without_side_channel_port_is_refused() -> None:
    with pytest.raises(ValueError, match="side_channel_port"):
        vllm_command(spec(side_channel_port=None))


def test_extra_args_pass_through(vllm_parse) -> None:
    command = vllm_command(spec(extra_args=("--seed", "7")))
    assert vllm_parse(command.argv).seed == 7


@pytest.mark.parametrize(
    ("pool", "role", "cores", "connector"),
    [("prefill", "prefill", (0,), True), ("decode", "decode", (1,), True)],
)
def test_from_the_local_profile(
    vllm_parse, pool: str, role: str, cores: tuple[int, ...], connector: bool
) -> None:
    local = profiles.load("local")
    worker = WorkerSpec.from_profile(local, pool, port=18110, side_channel_port=18510, cores=cores)
    assert (worker.role, worker.model, worker.cores, worker.kv_connector) == (
        role,
        "smollm2",  # the profile's model source; `pdserve worker` resolves it to the cache
        cores,
        connector,
    )
    assert worker.block_lease_s == local.kv_transfer.block_lease_s
    command = vllm_command(worker)
    args = vllm_parse(command.argv)
    assert args.max_num_seqs == local.engine.max_num_seqs
    assert args.kv_transfer_config.kv_load_failure_policy == "recompute"
    assert command.env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))


def test_standard_profile_both_pool_runs_without_connector() -> None:
    standard = profiles.load("standard")
    pool = standard.decode_pool
    worker = WorkerSpec.from_profile(standard, pool, port=18120)
    assert worker.role == "both" and not worker.kv_connector


def test_a100_l4_profile_composes_cuda_workers(vllm_parse) -> None:
    gpu = profiles.load("a100-l4")
    worker = WorkerSpec.from_profile(gpu, "prefill", port=8000, side_channel_port=5600)
    command = vllm_command(worker)
    args = vllm_parse(command.argv)
    assert args.dtype == "bfloat16"
    assert (
        json.loads(command.argv[command.argv.index("--kv-transfer-config") + 1])["kv_buffer_device"]
        == "cuda"
    )


@pytest.mark.parametrize(
    ("cores", "ranks", "expected"),
    [((0,), 1, "0"), ((0, 1), 1, "0,1"), ((0, 1, 2, 3), 2, "0,1|2,3"), ((4, 5, 6), 3, "4|5|6")],
)
def test_omp_threads_bind(cores: tuple[int, ...], ranks: int, expected: str) -> None:
    assert omp_threads_bind(cores, ranks) == expected


def test_omp_threads_bind_needs_a_core_per_rank() -> None:
    with pytest.raises(ValueError, match="at least 2 cores"):
        omp_threads_bind((0,), 2)
