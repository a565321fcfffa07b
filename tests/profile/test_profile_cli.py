"""The `pdserve profile` commands, run as a user runs them: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def pdserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_profile_list_prints_the_five_profiles_with_descriptions() -> None:
    result = pdserve("profile", "list")
    assert result.returncode == 0, result.stderr
    names = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in ("local", "standard", "disaggregated", "sim", "a100-l4"):
        assert name in names
        assert len(names[name].split(None, 1)[1]) > 20, "one-line description"


def test_profile_show_fills_defaults() -> None:
    result = pdserve("profile", "show", "standard")
    assert result.returncode == 0, result.stderr
    assert "prefill_threshold:" in result.stdout
    assert "mode: standard" in result.stdout


def test_validate_ok_and_broken(tmp_path: Path) -> None:
    assert pdserve("profile", "validate", "profiles/local.yaml").returncode == 0
    broken = tmp_path / "typo.yaml"
    broken.write_text(
        "pools:\n  decode:\n    role: decode\n    replicas: {min: 2, max: 1}\n"
        "routing: {mode: standard}\n"
    )
    result = pdserve("profile", "validate", str(broken))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(broken) in result.stderr
    assert "pools.decode.replicas" in result.stderr


def test_schema_is_json() -> None:
    result = pdserve("profile", "schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "Profile"
