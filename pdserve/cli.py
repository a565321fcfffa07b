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

    path = write_checkpoint(args.kind, args.out)
    print(path)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pdserve.workers.cli import main as worker_main

    return worker_main(args)


def _gateway(args: argparse.Namespace) -> int:
    from pdserve.gateway.server import run_gateway

    return run_gateway(profiles.load(args.profile), host=args.host, port=args.port)


def _up(args: argparse.Namespace) -> int:
    from pdserve.up import run_up

    return run_up(profiles.load(args.profile), host=args.host, port=args.port)


def _render(args: argparse.Namespace) -> int:
    from pdserve.render import render_values_yaml

    text = render_values_yaml(profiles.load(args.profile))
    if args.output in (None, "-"):
        print(text, end="")
    else:
        with open(args.output, "w") as handle:
            handle.write(text)
        print(f"wrote {args.output}")
    return 0


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
    up.set_defaults(handler=_up)

    gateway = sub.add_parser("gateway", help="the gateway alone (static, ray or k8s workers)")
    gateway.add_argument("--profile", required=True, help="profile name or path")
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--port", type=int, default=None)
    gateway.set_defaults(handler=_gateway)

    worker = sub.add_parser("worker", help="one worker (vLLM or simulated)")
    from pdserve.workers.cli import add_arguments

    add_arguments(worker)
    worker.set_defaults(handler=_worker)


def _add_model_render_commands(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="write a seeded checkpoint (no download)")
    model.add_argument("kind", choices=["tiny", "small"], help="tiny (~5M) or small (~190M)")
    model.add_argument("--out", default=None, help="directory (default: pdserve's model cache)")
    model.set_defaults(handler=_model)

    render = sub.add_parser("render", help="Helm values for a profile, one block per pool")
    render.add_argument("--profile", required=True, help="profile name or path")
    render.add_argument("-o", "--output", default=None, help="file (default: stdout)")
    render.set_defaults(handler=_render)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve", description="Disaggregated prefill/decode serving for vLLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile_commands(sub)
    _add_serving_commands(sub)
    _add_model_render_commands(sub)
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
