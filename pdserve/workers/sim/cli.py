"""Command-line flags of the simulated worker (`pdserve worker --engine sim ...`).

Every fault is also read from the environment (`PDSERVE_SIM_FAULT_<NAME>`, e.g.
`PDSERVE_SIM_FAULT_DIE_AFTER_TOKENS=40`) and from a profile pool's `sim_faults` mapping (keys
`die_after_tokens`, `prefill_fail`, `prefill_slow_s`, `cold_start_s`, `hang`, `refuse`).
A flag beats the environment, which beats the profile.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from pdserve.workers.sim.engine import Faults

ENV_PREFIX = "PDSERVE_SIM_FAULT_"
# fault name -> (flag, help, value when the flag is given bare)
FAULTS: dict[str, tuple[str, str, float | None]] = {
    "die_after_tokens": ("--fault-die-after-tokens", "exit after generating N tokens", None),
    "prefill_fail": ("--fault-prefill-fail", "fail this fraction of prefills (bare: all)", 1.0),
    "prefill_slow_s": ("--fault-prefill-slow", "add S seconds to every prefill step", None),
    "cold_start_s": ("--fault-cold-start", "wait S seconds before opening the port", None),
    "hang": ("--fault-hang", "accept connections but never answer", 1.0),
    "refuse": ("--fault-refuse", "never open the port (connections refused)", 1.0),
}


def _add(parser: argparse._ActionsContainer, flag: str, **kwargs: Any) -> None:
    """Add a flag unless the worker's own parser already defines it."""
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kwargs)


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulated worker (--engine sim)")
    _add(group, "--timing", default=None, help="preset (vllm-cpu-tiny, a100, l4, h100) or YAML")
    _add(group, "--time-scale", type=float, default=None, help="run N times faster than modelled")
    _add(group, "--accelerator", default=None, help="a GPU accelerator picks its timing preset")
    _add(group, "--kv-lease-s", type=float, default=None, help="unpulled prefill blocks expire")
    _add(
        group,
        "--kv-load-failure-policy",
        choices=["recompute", "fail"],
        default=None,
        help="a failed KV pull: recompute the prefill here, or fail the request",
    )
    for name, (flag, text, bare) in FAULTS.items():
        _add(
            group,
            flag,
            dest=f"fault_{name}",
            type=float,
            default=None,
            help=text,
            **({"nargs": "?", "const": bare} if bare is not None else {}),
        )


def faults_from(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    profile_faults: Mapping[str, float] | None = None,
) -> Faults:
    """Faults from flags, then `PDSERVE_SIM_FAULT_*`, then a profile's `sim_faults`."""
    environ = os.environ if environ is None else environ
    values: dict[str, float] = {}
    for name in FAULTS:
        flag = getattr(args, f"fault_{name}", None)
        env = environ.get(ENV_PREFIX + name.upper())
        profile = (profile_faults or {}).get(name)
        chosen = flag if flag is not None else env if env not in (None, "") else profile
        if chosen is not None:
            values[name] = float(chosen)
    die = values.get("die_after_tokens")
    return Faults(
        die_after_tokens=None if die is None or die <= 0 else int(die),
        prefill_fail=values.get("prefill_fail", 0.0),
        prefill_slow_s=values.get("prefill_slow_s", 0.0),
        cold_start_s=values.get("cold_start_s", 0.0),
        hang=values.get("hang", 0.0) > 0,
        refuse=values.get("refuse", 0.0) > 0,
    )
