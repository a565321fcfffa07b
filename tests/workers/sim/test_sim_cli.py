"""The sim's flags, fault sources (flag > env > profile) and profile mode."""

from __future__ import annotations

import argparse

import pytest

from pdserve.workers.cli import add_arguments
from pdserve.workers.sim.cli import add_sim_arguments, faults_from, settings_from
from pdserve.workers.sim.engine import Faults

pytestmark = pytest.mark.unit


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return parser.parse_args(list(argv))


def test_no_faults_by_default() -> None:
    assert faults_from(_parse(), environ={}) == Faults()


def test_bare_flags_and_values() -> None:
    flags = "--fault-hang --fault-prefill-fail --fault-die-after-tokens 40 --fault-cold-start 2.5"
    args = _parse(*flags.split(), "--fault-prefill-slow", "0.3", "--fault-refuse")
    assert faults_from(args, environ={}) == Faults(
        die_after_tokens=40, prefill_fail=1.0, prefill_slow_s=0.3, cold_start_s=2.5,
        hang=True, refuse=True,
    )  # fmt: skip


def test_flag_beats_env_beats_profile() -> None:
    env = {"PDSERVE_SIM_FAULT_COLD_START_S": "3", "PDSERVE_SIM_FAULT_DIE_AFTER_TOKENS": "7"}
    profile = {"cold_start_s": 9.0, "die_after_tokens": 9.0, "prefill_slow_s": 0.5}
    faults = faults_from(_parse("--fault-cold-start", "1"), env, profile)
    assert (faults.cold_start_s, faults.die_after_tokens, faults.prefill_slow_s) == (1.0, 7, 0.5)


def test_sim_flags_sit_beside_the_workers_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the workers CLI adds the sim's flags itself
    args = parser.parse_args(["--engine", "sim", "--role", "decode", "--port", "18250",
                              "--timing", "l4", "--fault-hang"])  # fmt: skip
    settings = settings_from(args, environ={})
    assert (settings.role, settings.port, settings.timing, settings.faults.hang) == (
        "decode", 18250, "l4", True,
    )  # fmt: skip


def test_profile_mode_reads_pool_engine_and_kv_transfer() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--profile", "sim", "--pool", "decode", "--port", "18251"])
    settings = settings_from(args, environ={})
    assert settings.role == "decode"
    assert settings.accelerator == "nvidia-l4" and settings.timing == "a100"
    assert settings.faults.cold_start_s == 2.0
    assert settings.kv_load_failure_policy == "recompute" and settings.kv_lease_s == 30
    assert (settings.kv_cache_gib, settings.max_num_seqs) == (16, 64)
