"""Command-line flags of the simulated worker (`pdserve worker --engine sim ...`).

Every fault is also read from the environment (`PDSERVE_SIM_FAULT_<NAME>`, e.g.
`PDSERVE_SIM_FAULT_DIE_AFTER_TOKENS=40`) and from a profile pool's `sim_faults` (the faults are
the fields of `pdserve.profile.SimFaults`; `cold_start_s` is the flag `--fault-cold-start`).
A flag beats the environment, which beats the profile.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pdserve.profile import Profile, SimFaults
from pdserve.workers.sim.engine import Faults
from pdserve.workers.sim.lora import parse_modules

ENV_PREFIX = "PDSERVE_SIM_FAULT_"
BARE = {"prefill_fail": 1.0, "hang": 1.0, "refuse": 1.0, "skip_kv_pull": 1.0, "error_share": 1.0}
"""A fault's value when its flag is given without one."""


def _fault_flags() -> dict[str, tuple[str, str, float | None]]:
    """fault name -> (flag, help, bare value), one per field of the profile's SimFaults."""
    return {
        name: (
            "--fault-" + name.removesuffix("_s").replace("_", "-"),
            field.description or name,
            BARE.get(name),
        )
        for name, field in SimFaults.model_fields.items()
    }


FAULTS = _fault_flags()


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
    _add(group, "--enable-lora", action="store_true", default=False, help="serve LoRA adapters")
    _add(group, "--max-loras", type=int, default=None, help="adapters held at once (default 1)")
    _add(group, "--lora-modules", nargs="+", default=None, help="name=path adapters at start")
    _add(
        group,
        "--api-key",
        action="append",
        default=None,
        dest="api_key",
        help="require this key on /v1 (repeatable; default: VLLM_API_KEY), as vLLM does",
    )
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
        skip_kv_pull=values.get("skip_kv_pull", 0.0) > 0,
        error_share=values.get("error_share", 0.0),
    )


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
    max_loras: int = 0  # LoRA off
    lora_modules: tuple[tuple[str, str], ...] = ()


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
        **_explicit_lora(args),
    )


def _explicit_lora(args: argparse.Namespace) -> dict[str, Any]:
    """vLLM's LoRA flags: on with --enable-lora, --max-loras 1 by default."""
    if not getattr(args, "enable_lora", False):
        return {}
    modules = parse_modules(getattr(args, "lora_modules", None))
    return {
        "max_loras": int(getattr(args, "max_loras", None) or 1),
        "lora_modules": tuple(modules.items()),
    }


def _from_profile(
    args: argparse.Namespace, loaded: Profile, environ: Mapping[str, str] | None
) -> SimSettings:
    pool_name = getattr(args, "pool", None)
    if pool_name not in loaded.pools:
        raise ValueError(f"--pool must name one of the profile's pools: {list(loaded.pools)}")
    pool = loaded.pools[pool_name]
    model = loaded.model_for(pool_name)
    engine = loaded.engine_for(pool_name)  # the pool's own engine settings over the profile's
    return SimSettings(
        role=pool.role.value,
        host=getattr(args, "host", None) or loaded.gateway.host,
        port=int(getattr(args, "port", None) or loaded.actuator.base_port),
        served_model=loaded.model_for(pool_name).name,  # the pool's own model
        max_model_len=loaded.model_for(pool_name).max_model_len,
        timing=_pick(getattr(args, "timing", None), loaded.engine.sim_timing),
        accelerator=_pick(getattr(args, "accelerator", None), pool.accelerator),
        time_scale=float(_pick(getattr(args, "time_scale", None), loaded.engine.sim_time_scale)),
        faults=faults_from(args, environ, pool.sim_faults.model_dump(exclude_none=True)),
        kv_load_failure_policy=loaded.kv_transfer.kv_load_failure_policy,
        kv_lease_s=float(
            _pick(getattr(args, "kv_lease_s", None), loaded.kv_transfer.block_lease_s)
        ),
        kv_cache_gib=engine.kv_cache_gib,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        max_loras=model.max_loras if model.adapters else 0,
        lora_modules=tuple((a.name, a.source) for a in model.adapters if a.load == "start"),
    )
