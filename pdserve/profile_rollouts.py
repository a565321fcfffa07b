"""Gradual rollouts of a served model, as a profile names them.

A rollout splits the requests for one served name (its `model`, what clients send) between two
versions, `stable` and `canary`: each a served model of the profile (with its own pools: two
checkpoints) or a LoRA adapter (two adapters). The rollout's name is either the stable version's
own name (clients keep sending it while its requests move onto the canary) or an alias that no
model or adapter has (listed on /v1/models). A request naming a version's own served name
goes to that version, outside the rollout.

The canary's share starts at `canary_percent` and moves in steps: by the admin API, or on the
schedule `steps` (one every `step_every_s`). Over a sliding window the gateway compares the two
versions' error rates and TTFT p99, and rolls the canary back to 0 when it is worse by more than
the `rollback` bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field, field_validator, model_validator

from pdserve.profile_pools import PositiveSeconds, Strict

SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class RollbackSpec(Strict):
    """When the gateway rolls a canary back on its own, comparing it with the stable version."""

    automatic: bool = Field(True, description="Roll back on the bounds below (false: admin only).")
    window_s: PositiveSeconds = Field(
        60, le=3600, description="Seconds of requests each version's figures are taken over."
    )
    min_requests: int = Field(
        20, ge=1, description="Requests each version needs in the window before it is judged."
    )
    max_error_rate_delta: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Roll back when the canary's error rate (5xx, a stream ended by an error) "
        "exceeds the stable's by more than this (0.05: 5 points).",
    )
    max_ttft_p99_ratio: float = Field(
        2.0,
        ge=1,
        description="Roll back when the canary's TTFT p99 exceeds the stable's times this.",
    )


class RolloutSpec(Strict):
    model: str = Field(
        min_length=1,
        max_length=128,
        pattern=SERVED_NAME,
        description="The served name clients send: the stable version's own name, or an alias "
        "no model or adapter has.",
    )
    stable: str = Field(description="The stable version: a served model or adapter name.")
    canary: str = Field(description="The canary version: a served model or adapter name.")
    canary_percent: float = Field(
        0, ge=0, le=100, description="The canary's share of the requests at start, percent."
    )
    steps: list[float] = Field(
        default_factory=list,
        description="The schedule: the canary's next shares, rising (e.g. [5, 50, 100]); one "
        "step every step_every_s. Empty: steps come only from the admin API.",
    )
    step_every_s: PositiveSeconds | None = Field(
        None, description="Seconds between scheduled steps (needed with steps)."
    )
    client_header: str = Field(
        "x-pdserve-client",
        pattern=r"^[A-Za-z0-9-]+$",
        description="A request header naming the client: the same client keeps its version "
        "while the canary's share rises. Without it, OpenAI's `user` body field names the "
        "client; without either, each request is drawn at random.",
    )
    rollback: RollbackSpec = Field(
        default_factory=RollbackSpec,
        description="When the canary is rolled back to 0 by itself (a rolled-back rollout "
        "takes no scheduled step until the admin API steps it again).",
    )

    @field_validator("client_header")
    @classmethod
    def _lower(cls, header: str) -> str:
        return header.lower()  # ASGI gives header names in lower case

    @model_validator(mode="after")
    def _steps_rise(self) -> RolloutSpec:
        if any(not 0 < s <= 100 for s in self.steps):
            raise ValueError(f"rollout {self.model}: steps must be in (0, 100], got {self.steps}")
        if any(a >= b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"rollout {self.model}: steps must rise, got {self.steps}")
        if self.steps and self.step_every_s is None:
            raise ValueError(f"rollout {self.model}: steps need step_every_s")
        return self


def check_rollouts(rollouts: Sequence[RolloutSpec], served: Mapping[str, str]) -> None:
    """Each rollout's versions are two distinct served names and its own name is the stable's
    or a new one; `served` maps every served name to what it is (for the messages)."""
    names = [r.model for r in rollouts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"rollouts: {repeated} rolled out twice; one rollout per served name")
    for rollout in rollouts:
        where = f"rollout {rollout.model}"
        for key in ("stable", "canary"):
            version = getattr(rollout, key)
            if version not in served:
                raise ValueError(
                    f"{where}: {key} {version!r} is no served model or adapter of the profile "
                    f"(served: {sorted(served)})"
                )
        if rollout.stable == rollout.canary:
            raise ValueError(f"{where}: stable and canary are both {rollout.stable!r}")
        if rollout.model != rollout.stable and rollout.model in served:
            raise ValueError(
                f"{where}: the name is {served[rollout.model]}; a rollout's name is its stable "
                "version's own name or an alias nothing else has"
            )
