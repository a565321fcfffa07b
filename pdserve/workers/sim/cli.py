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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pdserve.workers.sim.engine import Faults

if TYPE_CHECKING:
    from pdserve.profile import Profile

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


def _check_fault_keys(profile_faults: Mapping[str, float]) -> None:
    unknown = sorted(set(profile_faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"sim_faults: unknown key(s) {unknown}; known: {sorted(FAULTS)}")


@dataclass(frozen=True)
class SimSettings:
    """Everything one simulated worker needs, resolved from flags and an optional profile."""

    role: str
    host: str
    port: int
    served_model: str
    max_model_len: int
    timing: str
    accelerator: str | None
    time_scale: float
    faults: Faults
    kv_load_failure_policy: Literal["recompute", "fail"]
    kv_lease_s: float
    # profile mode: the engine limits of the profile replace the preset's
    kv_cache_gib: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None


def _pick(flag: Any, fallback: Any) -> Any:
    return fallback if flag is None else flag


def settings_from(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SimSettings:
    """Explicit mode reads the flags; profile mode (`--profile P --pool X`) reads the profile's
    engine, pool and kv_transfer sections, and a sim flag given on the command line wins."""
    profile_name = getattr(args, "profile", None)
    if profile_name:
        from pdserve import profile as profiles

        return _from_profile(args, profiles.load(profile_name), environ)
    policy: Literal["recompute", "fail"] = (
        "fail" if getattr(args, "kv_load_failure_policy", None) == "fail" else "recompute"
    )
    lease = _pick(getattr(args, "kv_lease_s", None), getattr(args, "block_lease_s", None))
    return SimSettings(
        role=getattr(args, "role", None) or "both",
        host=getattr(args, "host", None) or "127.0.0.1",
        port=int(getattr(args, "port", None) or 8000),
        served_model=str(
            getattr(args, "served_model_name", None) or getattr(args, "model", None) or "tiny"
        ),
        max_model_len=int(getattr(args, "max_model_len", None) or 2048),
        timing=getattr(args, "timing", None) or "vllm-cpu-tiny",
        accelerator=getattr(args, "accelerator", None),
        time_scale=float(getattr(args, "time_scale", None) or 1.0),
        faults=faults_from(args, environ),
        kv_load_failure_policy=policy,
        kv_lease_s=float(lease or 30.0),
    )


def _from_profile(
    args: argparse.Namespace, loaded: Profile, environ: Mapping[str, str] | None
) -> SimSettings:
    pool_name = getattr(args, "pool", None)
    if pool_name not in loaded.pools:
        raise ValueError(f"--pool must name one of the profile's pools: {list(loaded.pools)}")
    pool = loaded.pools[pool_name]
    _check_fault_keys(pool.sim_faults)
    return SimSettings(
        role=pool.role.value,
        host=getattr(args, "host", None) or loaded.gateway.host,
        port=int(getattr(args, "port", None) or loaded.actuator.base_port),
        served_model=loaded.model.name,
        max_model_len=loaded.model.max_model_len,
        timing=_pick(getattr(args, "timing", None), loaded.engine.sim_timing),
        accelerator=_pick(getattr(args, "accelerator", None), pool.accelerator),
        time_scale=float(_pick(getattr(args, "time_scale", None), loaded.engine.sim_time_scale)),
        faults=faults_from(args, environ, pool.sim_faults),
        kv_load_failure_policy=loaded.kv_transfer.kv_load_failure_policy,
        kv_lease_s=float(
            _pick(getattr(args, "kv_lease_s", None), loaded.kv_transfer.block_lease_s)
        ),
        kv_cache_gib=loaded.engine.kv_cache_gib,
        max_num_seqs=loaded.engine.max_num_seqs,
        max_num_batched_tokens=loaded.engine.max_num_batched_tokens,
    )
