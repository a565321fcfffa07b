"""`pdserve worker`: one worker, from a profile's pool or from explicit flags.

Profile mode (what the local actuator launches for each replica):
    pdserve worker --profile local --pool prefill --port 8101 --side-channel-port 8601 --cores 0
Explicit mode:
    pdserve worker --role prefill --model tiny --port 18101 --cores 0
`--engine sim` (or a profile whose engine.kind is sim) runs the simulated worker instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pdserve import profile as profiles
from pdserve.processes import free_port
from pdserve.workers.pinning import parse_cpu_list
from pdserve.workers.sim.cli import add_sim_arguments
from pdserve.workers.vllm_command import WorkerSpec, vllm_command

DEFAULT_READY_TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_argument_group("profile mode")
    mode.add_argument("--profile", default=None, help="profile name or path")
    mode.add_argument("--pool", default=None, help="the profile's pool this worker serves")
    common = parser.add_argument_group("both modes")
    common.add_argument("--port", type=int, default=None, help="HTTP port (required)")
    common.add_argument("--host", default="127.0.0.1", help="bind address")
    common.add_argument(
        "--side-channel-port",
        type=int,
        default=None,
        help="NIXL handshake port (default: a free one)",
    )
    common.add_argument(
        "--cores", default=None, help="CPU cores to bind every thread to, e.g. 0 or 0,1 or 2-3"
    )
    common.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        help="seconds to wait for /health before giving up",
    )
    explicit = parser.add_argument_group("explicit mode")
    _add_model_arguments(explicit)
    _add_transfer_arguments(explicit)
    add_sim_arguments(parser)


def _add_model_arguments(group: argparse._ArgumentGroup) -> None:
    """The server: role, engine, model and its sizes."""
    group.add_argument("--role", choices=["prefill", "decode", "both"], default=None)
    group.add_argument(
        "--engine",
        choices=["vllm", "sim"],
        default=None,
        help="default: the profile's engine.kind, else vllm",
    )
    group.add_argument("--model", default="tiny", help="tiny, small or a checkpoint directory")
    group.add_argument("--served-model-name", default=None)
    group.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    group.add_argument("--dtype", default="float32")
    group.add_argument("--kv-cache-gib", type=float, default=1.0)
    group.add_argument("--max-model-len", type=int, default=2048)
    group.add_argument("--max-num-seqs", type=int, default=64)
    group.add_argument("--tensor-parallel-size", type=int, default=1)


def _add_transfer_arguments(group: argparse._ArgumentGroup) -> None:
    """KV transfer (NIXL), start-up and any extra vLLM flag."""
    group.add_argument(
        "--kv-load-failure-policy",
        choices=["recompute", "fail"],
        default=None,
        help="a failed KV pull: recompute locally (default) or fail the request",
    )
    group.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip torch.compile and CUDA graphs (fast start; the default)",
    )
    group.add_argument(
        "--block-lease-s",
        type=float,
        default=30.0,
        help="prefill blocks not pulled within this are freed",
    )
    group.add_argument(
        "--kv-connector",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NixlConnector (default: on for prefill and decode, off for both)",
    )
    group.add_argument("--ucx-tls", default=None)
    group.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        dest="vllm_args",
        help="extra vLLM server flag, repeatable (e.g. --vllm-arg=--seed=1)",
    )


def main(args: argparse.Namespace) -> int:
    loaded = profiles.load(args.profile) if args.profile else None
    engine = args.engine or (loaded.engine.kind.value if loaded else "vllm")
    if engine == "sim":
        from pdserve.workers.sim.server import run as run_sim

        return run_sim(args)
    if args.port is None:
        print("error: --port is required", file=sys.stderr)
        return 2
    try:
        spec = worker_spec(args, loaded)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _launch(spec, args.ready_timeout)


def worker_spec(args: argparse.Namespace, loaded: profiles.Profile | None) -> WorkerSpec:
    """The worker's spec from parsed flags (and the loaded profile in profile mode), with the
    model resolved to a checkpoint directory and a side-channel port picked when needed."""
    from pdserve.workers.adapters import ensure_adapter
    from pdserve.workers.checkpoint import ensure_model

    cores = tuple(sorted(parse_cpu_list(args.cores))) if args.cores else ()
    if loaded is not None:
        if not args.pool or args.pool not in loaded.pools:
            raise ValueError(f"--pool must name one of the profile's pools: {list(loaded.pools)}")
        spec = WorkerSpec.from_profile(loaded, args.pool, args.port, args.side_channel_port, cores)
        spec = replace(spec, host=args.host)
    else:
        spec = _explicit_spec(args, cores)
    if spec.kv_connector and spec.side_channel_port is None:
        spec = replace(spec, side_channel_port=free_port(spec.host))
    loras = tuple((name, str(ensure_adapter(source))) for name, source in spec.lora_modules)
    return replace(spec, model=str(ensure_model(spec.model)), lora_modules=loras)


def _explicit_spec(args: argparse.Namespace, cores: tuple[int, ...]) -> WorkerSpec:
    if args.role is None:
        raise ValueError("give --profile and --pool, or --role")
    connector = args.kv_connector if args.kv_connector is not None else args.role != "both"
    return WorkerSpec(
        role=args.role,
        model=args.model,
        port=args.port,
        served_model_name=args.served_model_name or Path(args.model).name,
        host=args.host,
        side_channel_port=args.side_channel_port,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        max_num_seqs=args.max_num_seqs,
        tensor_parallel_size=args.tensor_parallel_size,
        kv_connector=connector,
        kv_buffer_device=args.device,
        kv_load_failure_policy=args.kv_load_failure_policy or "recompute",
        enforce_eager=args.enforce_eager,
        block_lease_s=args.block_lease_s,
        ucx_tls=args.ucx_tls,
        cores=cores,
        extra_args=tuple(args.vllm_args),
        **_explicit_lora(args),
    )


def _explicit_lora(args: argparse.Namespace) -> dict[str, Any]:
    """--enable-lora [--max-loras N] [--lora-modules name=source ...]: the simulated worker's
    flags (vLLM's names); sources are resolved like a profile's (`seeded:tiny/<name>`)."""
    if not getattr(args, "enable_lora", False):
        return {}
    from pdserve.workers.sim.lora import parse_modules

    modules = parse_modules(getattr(args, "lora_modules", None))
    return {"max_loras": args.max_loras or 1, "lora_modules": tuple(modules.items())}


def _launch(spec: WorkerSpec, ready_timeout_s: float) -> int:
    from pdserve.workers.launcher import LaunchOptions, run_worker

    command = vllm_command(spec)
    print(f"pdserve worker: {spec.role} on {spec.host}:{spec.port}, cores {spec.cores or 'any'}, "
          f"side channel {spec.side_channel_port}", file=sys.stderr, flush=True)  # fmt: skip
    options = LaunchOptions(
        health_url=f"http://{spec.host}:{spec.port}/health",
        cores=spec.cores if spec.device == "cpu" else (),
        ready_timeout_s=ready_timeout_s,
        pin_self=True,
    )
    return asyncio.run(run_worker(command, options))
