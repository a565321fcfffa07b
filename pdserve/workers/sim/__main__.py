"""`python -m pdserve.workers.sim --role both --port 18200 [--timing ...] [--fault-...]`."""

from __future__ import annotations

import argparse
import sys

from pdserve.workers.sim.cli import add_sim_arguments
from pdserve.workers.sim.server import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdserve.workers.sim")
    parser.add_argument("--role", choices=["prefill", "decode", "both"], default="both")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="tiny")
    parser.add_argument("--max-model-len", type=int, default=2048)
    add_sim_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
