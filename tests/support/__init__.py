"""Shared test support: fakes, fixtures, and the profiles tests start (tests/support/profiles)."""

from __future__ import annotations

from pathlib import Path

PROFILES = Path(__file__).parent / "profiles"
