"""Where pdserve keeps what it writes for itself: seeded checkpoints, the extracted helm binary."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$PDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pdserve, else ~/.cache/pdserve."""
    if explicit := os.environ.get("PDSERVE_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pdserve"
