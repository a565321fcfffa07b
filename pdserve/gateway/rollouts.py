"""The gateway's rollouts: each rollout's canary share, its steps and their reasons, and a
sliding window per version of the requests it served, from which it is rolled back.

Per request: `pick` chooses the version (sticky by the rollout's client header, else OpenAI's
`user` field, else a draw) with `policies.rollout.choose_version`; when the request is over,
`finished` records its outcome in that version's window (an error: a 5xx, a stream its worker
ended with an error event; TTFT: the gateway's own measure) and checks `rollback_reason`. A
schedule task steps each rollout with `next_step`; the admin API steps, rolls back and resumes
(`step`, `roll_back`). State follows the active profile: a rollout the profile keeps unchanged
keeps its state, a changed or new one starts from its profile values, a dropped one is gone.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pdserve.policies.rollout import (
    RollbackBounds,
    Version,
    WindowFigures,
    choose_version,
    next_step,
    rollback_reason,
)
from pdserve.profile import Profile
from pdserve.profile_rollouts import RolloutSpec

if TYPE_CHECKING:
    from pdserve.gateway.proxy import Exchange

VERSION_HEADER = "x-pdserve-version"
SCHEDULE_TICK_S = 0.25
CHECK_EVERY_S = 0.2  # the rollback check's figures sort the window's TTFTs: not every request
RolloutState = Literal["rolling", "complete", "rolled_back"]


@dataclass(frozen=True)
class Outcome:
    at: float
    error: bool
    ttft_s: float | None


class Window:
    """One version's requests over the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.outcomes: deque[Outcome] = deque()

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.trim(outcome.at)

    def trim(self, now: float) -> None:
        while self.outcomes and self.outcomes[0].at <= now - self.window_s:
            self.outcomes.popleft()

    def figures(self, now: float) -> WindowFigures:
        self.trim(now)
        ttfts = sorted(o.ttft_s for o in self.outcomes if o.ttft_s is not None)
        return WindowFigures(
            requests=len(self.outcomes),
            errors=sum(o.error for o in self.outcomes),
            ttft_p99_s=ttfts[math.ceil(0.99 * len(ttfts)) - 1] if ttfts else None,
        )


@dataclass
class Rollout:
    """One rollout's state: raw observations; its `state` is derived."""

    spec: RolloutSpec
    percent: float
    last_step_at: float
    reason: str
    rolled_back: bool = False
    checked_at: float = -math.inf
    windows: dict[Version, Window] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset_windows()

    def reset_windows(self) -> None:
        self.windows = {v: Window(self.spec.rollback.window_s) for v in ("stable", "canary")}

    @property
    def state(self) -> RolloutState:
        if self.rolled_back:
            return "rolled_back"
        return "complete" if self.percent >= 100 else "rolling"

    def served(self, version: Version) -> str:
        return self.spec.canary if version == "canary" else self.spec.stable

    def bounds(self) -> RollbackBounds:
        rollback = self.spec.rollback
        return RollbackBounds(
            rollback.min_requests, rollback.max_error_rate_delta, rollback.max_ttft_p99_ratio
        )


@dataclass(frozen=True)
class Pick:
    """The version chosen for one request, and the rollout whose window records it."""

    rollout: Rollout
    version: Version

    @property
    def served(self) -> str:
        return self.rollout.served(self.version)


def header_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.encode("latin-1")
    return next((v.decode("latin-1") for k, v in headers if k == wanted), None)


def client_key(rollout: RolloutSpec, body: Mapping[str, Any], headers: Any) -> str | None:
    """The client named by the rollout's header, else by OpenAI's `user` field; None: neither."""
    named = header_value(headers, rollout.client_header)
    if named:
        return named
    user = body.get("user")
    return user if isinstance(user, str) and user else None


def is_error(status: str) -> bool:
    """A failure of the version (5xx, 502 for a stream ended by an error event); a client's
    own error (4xx) or capacity refusal counts as a request, not against the version."""
    return status.startswith("5")


class Rollouts:
    def __init__(
        self,
        profile: Callable[[], Profile],
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.profile = profile
        self.clock = clock
        self.draw = draw
        self.check_every_s = check_every_s
        self._followed: Profile | None = None
        self._rollouts: dict[str, Rollout] = {}

    def current(self) -> dict[str, Rollout]:
        """The rollouts of the active profile (state kept for those it left unchanged)."""
        profile = self.profile()
        if profile is not self._followed:
            self._followed = profile
            self._rollouts = {s.model: self._kept_or_new(s) for s in profile.rollouts}
        return self._rollouts

    def _kept_or_new(self, spec: RolloutSpec) -> Rollout:
        kept = self._rollouts.get(spec.model)
        if kept is not None and kept.spec == spec:
            return kept
        reason = f"profile: starts at {spec.canary_percent:g}%"
        return Rollout(spec, spec.canary_percent, self.clock(), reason)

    def pick(self, body: Mapping[str, Any], headers: Any) -> Pick | None:
        """The version serving a request for a rolled-out name; None for any other name."""
        requested = body.get("model")
        rollout = self.current().get(requested) if isinstance(requested, str) else None
        if rollout is None:
            return None
        key = client_key(rollout.spec, body, headers)
        return Pick(rollout, choose_version(rollout.percent, key, self.draw()))

    def finished(self, ex: Exchange, status: str) -> None:
        """A request is over (the telemetry's hook): record it; roll back if need be."""
        if ex.rollout is None or status == "499":  # a client that left says nothing of it
            return
        self.record(ex.rollout, is_error(status), ex.obs.ttft_s)

    def record(self, pick: Pick, error: bool, ttft_s: float | None) -> None:
        rollout, now = pick.rollout, self.clock()
        rollout.windows[pick.version].add(Outcome(now, error, ttft_s))
        if rollout.rolled_back or not rollout.spec.rollback.automatic or rollout.percent <= 0:
            return
        if now - rollout.checked_at < self.check_every_s:
            return
        rollout.checked_at = now
        stable, canary = (rollout.windows[v].figures(now) for v in ("stable", "canary"))
        reason = rollback_reason(stable, canary, rollout.bounds())
        if reason is not None:
            self._set(rollout, 0, f"automatic rollback: {reason}", now)
            rollout.rolled_back = True

    def step(self, name: str, percent: float, reason: str) -> Rollout | None:
        """A step by the admin API; it resumes a rolled-back rollout on fresh windows."""
        rollout = self.current().get(name)
        if rollout is None:
            return None
        if rollout.rolled_back:
            rollout.rolled_back = False
            rollout.reset_windows()
        self._set(rollout, percent, reason, self.clock())
        return rollout

    def roll_back(self, name: str, reason: str) -> Rollout | None:
        rollout = self.current().get(name)
        if rollout is not None:
            self._set(rollout, 0, reason, self.clock())
            rollout.rolled_back = True
        return rollout

    def _set(self, rollout: Rollout, percent: float, reason: str, now: float) -> None:
        rollout.percent, rollout.reason, rollout.last_step_at = percent, reason, now

    def tick(self) -> None:
        """The schedule's steps that are due (none for a rolled-back rollout)."""
        now = self.clock()
        for rollout in self.current().values():
            spec = rollout.spec
            if rollout.rolled_back or spec.step_every_s is None:
                continue
            decision = next_step(
                rollout.percent, spec.steps, rollout.last_step_at, spec.step_every_s, now
            )
            if decision is not None:
                self._set(rollout, decision.percent, decision.reason, now)

    async def run_schedule(self, tick_s: float = SCHEDULE_TICK_S) -> None:
        while True:
            self.tick()
            await asyncio.sleep(tick_s)

    def view(self) -> dict[str, Any]:
        """GET /admin/rollouts: each rollout's weights, state, last step, window figures."""
        now = self.clock()
        return {name: rollout_view(r, now) for name, r in self.current().items()}


def rollout_view(rollout: Rollout, now: float) -> dict[str, Any]:
    spec = rollout.spec
    return {
        "stable": spec.stable,
        "canary": spec.canary,
        "weights": {"stable": 100 - rollout.percent, "canary": rollout.percent},
        "state": rollout.state,
        "steps": spec.steps,
        "last_step": {"reason": rollout.reason, "ago_s": round(now - rollout.last_step_at, 3)},
        "window_s": spec.rollback.window_s,
        "window": {v: figures_view(w.figures(now)) for v, w in rollout.windows.items()},
    }


def figures_view(figures: WindowFigures) -> dict[str, Any]:
    return {
        "requests": figures.requests,
        "errors": figures.errors,
        "error_rate": round(figures.error_rate, 4),
        "ttft_p99_s": figures.ttft_p99_s,
    }
