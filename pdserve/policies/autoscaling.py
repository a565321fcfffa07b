"""Per-pool autoscaling: a pure function of (snapshot, previous state, pool spec, role).

Each pool's signal is turned into a demand measured in replicas (fractional):
- decode (and `both`) pools: concurrency / target_concurrency, where concurrency is requests
  queued at the gateway plus those on the replicas; one more replica's worth when the fullest
  replica's KV cache is above the high-water mark;
- prefill pools: queued prompt tokens as seconds of backlog at one replica's prefill throughput
  (measured, or configured until measured) over the target backlog, plus in-flight prefills
  over the per-replica target concurrency.

One wrapper, shared by every pool, then applies the limits (Knative KPA stable and panic windows,
hysteresis, scale-up and scale-down delays, rate limits, scale-to-zero grace, immediate
scale-from-zero, min/max). The window samples and timers live in `AutoscaleState`; the clock is
`snapshot.now`. Nothing here reads a clock, does I/O or keeps global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pdserve.policies.types import ScaleDecision
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Role, ScalingSpec

Sample = tuple[float, float]  # (snapshot.now, value)


@dataclass(frozen=True)
class AutoscaleState:
    """What one pool's policy remembers between decisions."""

    demand: tuple[Sample, ...] = ()  # raw demand (replicas) within the stable window
    recommendations: tuple[Sample, ...] = ()  # pre-delay targets within the scale-down delay
    panic_since: float | None = None  # when the current panic started
    panic_trigger: float | None = None  # last time the panic condition held
    panic_peak: int = 0  # highest decision while panicking (a panic never scales down)
    up_since: float | None = None  # target has been above current since then
    down_since: float | None = None  # target has been below current since then
    idle_since: float | None = None  # no request queued or in the pool since then

    @classmethod
    def initial(cls) -> AutoscaleState:
        return cls()


@dataclass(frozen=True)
class _Step:
    """A target replica count being refined by the limits, with the story so far."""

    target: int
    notes: tuple[str, ...]

    def then(self, target: int, note: str | None = None) -> _Step:
        return _Step(target, self.notes if note is None else (*self.notes, note))


def decide(
    snapshot: PoolSnapshot, state: AutoscaleState, pool: PoolSpec, role: Role
) -> tuple[ScaleDecision, AutoscaleState]:
    """One decision for one pool. `role` picks the signal; the limits are the same for all."""
    demand, explanation = pool_demand(snapshot, pool.scaling, role)
    return apply_limits(snapshot, state, pool, demand, explanation)


def pool_demand(snapshot: PoolSnapshot, scaling: ScalingSpec, role: Role) -> tuple[float, str]:
    """Instantaneous demand in replicas (fractional) and its arithmetic."""
    if role is Role.prefill:
        return prefill_demand(snapshot, scaling)
    return decode_demand(snapshot, scaling)


def decode_demand(snapshot: PoolSnapshot, scaling: ScalingSpec) -> tuple[float, str]:
    concurrency = snapshot.concurrency
    demand = concurrency / scaling.target_concurrency
    text = f"concurrency {concurrency} / target {_num(scaling.target_concurrency)} = {demand:.2f}"
    if snapshot.kv_usage_max > scaling.kv_high_watermark:
        demand += 1
        text += (
            f" + 1 (kv usage {snapshot.kv_usage_max:.2f} > watermark "
            f"{scaling.kv_high_watermark:.2f}) = {demand:.2f}"
        )
    return demand, text


def prefill_demand(snapshot: PoolSnapshot, scaling: ScalingSpec) -> tuple[float, str]:
    measured = snapshot.prefill_tokens_per_s
    rate = measured if measured and measured > 0 else scaling.prefill_tokens_per_s
    source = "measured" if rate is measured else "configured"
    backlog_s = snapshot.queued_prompt_tokens / rate
    backlog = backlog_s / scaling.target_backlog_s
    in_flight = snapshot.running / scaling.target_concurrency
    demand = backlog + in_flight
    text = (
        f"backlog {snapshot.queued_prompt_tokens} tok / {_num(rate)} tok/s ({source}) = "
        f"{backlog_s:.2f} s / target {_num(scaling.target_backlog_s)} s = {backlog:.2f}"
        f" + {snapshot.running} in flight / {_num(scaling.target_concurrency)} = {demand:.2f}"
    )
    if snapshot.wanted and demand < 1:
        # Requests held at the gateway (or prefilled elsewhere while the pool is cold) need a
        # replica even when their tokens are few.
        demand = 1.0
        text += f"; {_wanted(snapshot)} -> 1.00"
    return demand, text


def apply_limits(
    snapshot: PoolSnapshot,
    state: AutoscaleState,
    pool: PoolSpec,
    demand: float,
    explanation: str,
) -> tuple[ScaleDecision, AutoscaleState]:
    """The limits wrapper every pool shares (STYLE.md 4)."""
    scaling, now, current = pool.scaling, snapshot.now, snapshot.current
    samples = _window((*state.demand, (now, demand)), now, scaling.stable_window_s)
    stable = _mean(samples)
    panic_avg = _mean(_window(samples, now, scaling.panic_window_s))
    step = _stable_step(snapshot.pool, explanation, stable, current, scaling)
    panic_target = math.ceil(_with_headroom(panic_avg, scaling)[0] - 1e-9)
    step, state = _panic(step, state, snapshot, scaling, panic_target, panic_avg)
    recommendations = _window(
        (*state.recommendations, (now, step.target)), now, scaling.scale_down_delay_s
    )
    state = replace(state, demand=samples, recommendations=recommendations)
    step, state = _delays(step, state, now, current, scaling)
    step = _rate_limits(step, current, scaling)
    step, state = _scale_to_zero(step, state, snapshot, pool)
    step = _bounds(step, snapshot, pool)
    if state.panic_since is not None:
        state = replace(state, panic_peak=max(state.panic_peak, step.target))
    decision = ScaleDecision(
        pool=snapshot.pool,
        desired=step.target,
        current=current,
        reason=f"{'; '.join(step.notes)} -> desired {step.target} (current {current})",
        panic=state.panic_since is not None,
        at=now,
    )
    return decision, state


def _panic(
    step: _Step,
    state: AutoscaleState,
    snapshot: PoolSnapshot,
    scaling: ScalingSpec,
    panic_target: int,
    panic_avg: float,
) -> tuple[_Step, AutoscaleState]:
    """KPA panic mode: enter when panic-window demand >= threshold x ready capacity; while in
    it, follow the panic window and never go down; leave after a stable window without trigger."""
    now = snapshot.now
    capacity = max(1, snapshot.ready)
    triggered = panic_avg >= scaling.panic_threshold * capacity
    if triggered:
        since = state.panic_since if state.panic_since is not None else now
        state = replace(state, panic_since=since, panic_trigger=now)
    elif state.panic_trigger is not None and now - state.panic_trigger >= scaling.stable_window_s:
        step = step.then(
            step.target, f"panic over ({_num(now - state.panic_trigger)} s without trigger)"
        )
        return step, replace(state, panic_since=None, panic_trigger=None, panic_peak=0)
    if state.panic_since is None:
        return step, state
    target = max(panic_target, state.panic_peak, snapshot.current)
    note = (
        f"PANIC: panic avg {panic_avg:.2f} over {_num(scaling.panic_window_s)} s "
        f"{'>=' if triggered else '<'} {_num(scaling.panic_threshold)} x {capacity} ready -> "
        f"{panic_target}, never below {max(state.panic_peak, snapshot.current)} -> {target}"
    )
    return step.then(target, note), state


def _delays(
    step: _Step, state: AutoscaleState, now: float, current: int, scaling: ScalingSpec
) -> tuple[_Step, AutoscaleState]:
    """Scale up only after the target stayed above current for scale_up_delay_s (a panic acts
    at once); scale down only after it stayed below for scale_down_delay_s, and then only to
    the highest target seen within that delay."""
    target = step.target
    if target > current:
        state = replace(state, down_since=None)
        since = state.up_since if state.up_since is not None else now
        state = replace(state, up_since=since)
        held = now - since
        if state.panic_since is None and held < scaling.scale_up_delay_s:
            note = f"up held {_num(held)} s < delay {_num(scaling.scale_up_delay_s)} s"
            return step.then(current, note), state
        return step, state
    if target < current:
        state = replace(state, up_since=None)
        since = state.down_since if state.down_since is not None else now
        state = replace(state, down_since=since)
        held = now - since
        if held < scaling.scale_down_delay_s:
            note = f"down held {_num(held)} s < delay {_num(scaling.scale_down_delay_s)} s"
            return step.then(current, note), state
        peak = max(int(value) for _, value in state.recommendations)
        if peak > target:
            note = f"highest target within the {_num(scaling.scale_down_delay_s)} s delay {peak}"
            return step.then(min(peak, current), note), state
        return step, state
    return step, replace(state, up_since=None, down_since=None)


def _rate_limits(step: _Step, current: int, scaling: ScalingSpec) -> _Step:
    most = max(current + 1, math.ceil(current * scaling.max_scale_up_rate))
    if step.target > most:
        return step.then(
            most, f"up rate max({current} + 1, {_num(scaling.max_scale_up_rate)} x {current})"
        )
    fewest = current - scaling.max_scale_down_step
    if step.target < fewest:
        return step.then(fewest, f"down step {current} - {scaling.max_scale_down_step}")
    return step


def _scale_to_zero(
    step: _Step, state: AutoscaleState, snapshot: PoolSnapshot, pool: PoolSpec
) -> tuple[_Step, AutoscaleState]:
    """The last replica goes only after the pool was idle for scale_to_zero_grace_s.

    Idle counts only while a replica is ready: a pool whose only replica is still starting has
    not been offered to anyone yet (a vLLM cold start of 73-190 s outlived the shipped 60 s
    grace, and the woken worker was stopped mid-start)."""
    grace = pool.scaling.scale_to_zero_grace_s
    busy = snapshot.wanted + snapshot.inflight + snapshot.running + snapshot.waiting
    if busy or snapshot.ready == 0:
        state = replace(state, idle_since=None)
    elif state.idle_since is None:
        state = replace(state, idle_since=snapshot.now)
    if step.target > 0 or snapshot.current == 0 or pool.replicas.min > 0:
        return step, state
    idle = 0.0 if state.idle_since is None else snapshot.now - state.idle_since
    if idle < grace:
        note = f"idle {_num(idle)} s < scale-to-zero grace {_num(grace)} s"
        return step.then(1, note), state
    return step.then(0, f"idle {_num(idle)} s -> zero"), state


def _bounds(step: _Step, snapshot: PoolSnapshot, pool: PoolSpec) -> _Step:
    low, high = pool.replicas.min, pool.replicas.max
    if snapshot.current == 0 and snapshot.wanted and step.target < 1:
        step = step.then(1, f"{_wanted(snapshot)} at zero replicas: start one now")
    if step.target < low:
        return step.then(low, f"min {low}")
    if step.target > high:
        return step.then(high, f"max {high}")
    return step


def _stable_step(
    pool: str, explanation: str, stable: float, current: int, scaling: ScalingSpec
) -> _Step:
    """The stable average (plus headroom) as a replica count, hysteresis applied."""
    spared, headroom = _with_headroom(stable, scaling)
    notes: tuple[str, ...] = (
        f"{pool}: {explanation}",
        f"stable avg {stable:.2f} over {_num(scaling.stable_window_s)} s",
    )
    if headroom is not None:
        notes = (*notes, headroom)
    return _Step(_with_tolerance(spared, current, scaling.tolerance), notes)


def _wanted(snapshot: PoolSnapshot) -> str:
    text = f"{snapshot.queued_requests} held"
    if snapshot.diverted_requests:
        text += f" + {snapshot.diverted_requests} prefilled elsewhere while cold"
    return text


def _with_headroom(demand: float, scaling: ScalingSpec) -> tuple[float, str | None]:
    """Spare replicas above demand while there is demand (Knative's target-burst-capacity)."""
    if scaling.headroom <= 0 or demand <= 0:
        return demand, None
    return (
        demand + scaling.headroom,
        f"+ headroom {scaling.headroom} = {demand + scaling.headroom:.2f}",
    )


def _with_tolerance(demand: float, current: int, tolerance: float) -> int:
    """ceil(demand), unless demand is within `tolerance` of current capacity (hysteresis)."""
    if current > 0 and abs(demand - current) <= tolerance * current:
        return current
    return math.ceil(demand - 1e-9)


def _window(samples: tuple[Sample, ...], now: float, width: float) -> tuple[Sample, ...]:
    return tuple(sample for sample in samples if now - sample[0] < width or sample[0] == now)


def _mean(samples: tuple[Sample, ...]) -> float:
    return sum(value for _, value in samples) / len(samples) if samples else 0.0


def _num(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}"
