"""Gradual rollouts: which version (stable or canary) serves a request, when the canary's share
steps up, and when it is rolled back.

Pure: the weight, the client's key, the window's figures per version and the clock in; the
choice or the decision with its reason out.

- **Choice**: a client named by a header is sticky: its key hashes to a point in [0, 100), and
  it gets the canary while that point is below the canary's percent, so raising the weight only
  moves clients from stable to canary, never back. Without a key, a uniform draw the caller
  passes in (seeded in tests) decides.
- **Steps**: the schedule's next weight once `step_every_s` has passed since the last step.
- **Rollback**: over the window, once each version has `min_requests`, the canary is rolled
  back when its error rate exceeds the stable's by more than `max_error_rate_delta`, or its
  TTFT p99 exceeds the stable's times `max_ttft_p99_ratio`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Version = Literal["stable", "canary"]


def client_point(key: str) -> float:
    """A client's fixed point in [0, 100)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


def choose_version(canary_percent: float, client_key: str | None, draw: float) -> Version:
    """`draw` in [0, 1) is used only when no client key is given."""
    point = client_point(client_key) if client_key else draw * 100.0
    return "canary" if point < canary_percent else "stable"


@dataclass(frozen=True)
class StepDecision:
    percent: float
    reason: str


def next_step(
    percent: float, steps: Sequence[float], last_step_at: float, step_every_s: float, now: float
) -> StepDecision | None:
    """The scheduled step up from `percent`, if its time has come; None otherwise."""
    ahead = [s for s in steps if s > percent]
    if not ahead:
        return None
    due = last_step_at + step_every_s
    if now < due:
        return None
    return StepDecision(
        min(ahead),
        f"scheduled: {percent:g}% -> {min(ahead):g}% ({now - last_step_at:.0f} s "
        f">= every {step_every_s:g} s)",
    )


@dataclass(frozen=True)
class WindowFigures:
    """One version's requests over the rollback window."""

    requests: int
    errors: int
    ttft_p99_s: float | None  # None: no first token in the window

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class RollbackBounds:
    min_requests: int
    max_error_rate_delta: float
    max_ttft_p99_ratio: float


def rollback_reason(
    stable: WindowFigures, canary: WindowFigures, bounds: RollbackBounds
) -> str | None:
    """Why the canary must be rolled back now, or None while it holds (or too few requests)."""
    if min(stable.requests, canary.requests) < bounds.min_requests:
        return None
    delta = canary.error_rate - stable.error_rate
    if delta > bounds.max_error_rate_delta:
        return (
            f"canary error rate {canary.error_rate:.1%} > stable {stable.error_rate:.1%} + "
            f"{bounds.max_error_rate_delta:.1%} ({canary.errors}/{canary.requests} against "
            f"{stable.errors}/{stable.requests})"
        )
    if canary.ttft_p99_s is not None and stable.ttft_p99_s is not None:
        limit = stable.ttft_p99_s * bounds.max_ttft_p99_ratio
        if canary.ttft_p99_s > limit:
            return (
                f"canary TTFT p99 {canary.ttft_p99_s * 1e3:.0f} ms > stable "
                f"{stable.ttft_p99_s * 1e3:.0f} ms x {bounds.max_ttft_p99_ratio:g}"
            )
    return None
