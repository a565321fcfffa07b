"""Table-driven tests of the per-pool autoscaling policy. Expected arithmetic in comments."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pdserve.policies.autoscaling import AutoscaleState, decide, decode_demand, prefill_demand
from pdserve.policies.types import ScaleDecision
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.profile import PoolSpec, Replicas, Role, ScalingSpec

pytestmark = pytest.mark.unit

# Decode pool used by most tables: 8 requests per replica, 10 s stable / 2 s panic windows,
# scale down after 5 s, at most x2 up and -1 down per decision, 1..8 replicas.
DECODE = PoolSpec(
    role=Role.decode,
    replicas=Replicas(min=1, max=8),
    scaling=ScalingSpec(
        target_concurrency=8, stable_window_s=10, panic_window_s=2, scale_down_delay_s=5
    ),
)
# Prefill pool: 20,000 tok/s configured, 1 s target backlog, may go to zero after 10 s idle.
PREFILL = PoolSpec(
    role=Role.prefill,
    replicas=Replicas(min=0, max=8, initial=1),
    scaling=ScalingSpec(
        target_backlog_s=1,
        prefill_tokens_per_s=20_000,
        stable_window_s=10,
        panic_window_s=2,
        scale_down_delay_s=5,
        scale_to_zero_grace_s=10,
    ),
)


def snap(
    now: float,
    ready: int,
    *,
    pool: str = "decode",
    starting: int = 0,
    queued: int = 0,
    running: int = 0,
    tokens: int = 0,
    kv: float = 0.0,
    measured: float | None = None,
) -> PoolSnapshot:
    return PoolSnapshot(
        pool=pool,
        now=now,
        ready=ready,
        starting=starting,
        draining=0,
        queued_requests=queued,
        queued_prompt_tokens=tokens,
        running=running,
        waiting=0,
        inflight=running,
        kv_usage_max=kv,
        prefill_tokens_per_s=measured,
    )


@dataclass
class Drive:
    """Feed one snapshot a second; the pool becomes what was decided (instant readiness)."""

    spec: PoolSpec
    role: Role
    ready: int
    now: float = 0.0
    state: AutoscaleState = AutoscaleState.initial()

    def tick(self, **load: int | float) -> ScaleDecision:
        name = "prefill" if self.role is Role.prefill else "decode"
        decision, self.state = decide(
            snap(self.now, self.ready, pool=name, **load), self.state, self.spec, self.role
        )
        self.ready = decision.desired
        self.now += 1.0
        return decision

    def run(self, seconds: int, **load: int | float) -> list[int]:
        return [self.tick(**load).desired for _ in range(seconds)]


@pytest.mark.parametrize(
    ("concurrency", "kv", "expected"),
    [
        (37, 0.0, 37 / 8),  # 37 / 8 = 4.62
        (16, 0.5, 2.0),  # 16 / 8 = 2.00, kv under the 0.9 watermark
        (8, 0.95, 2.0),  # 8 / 8 = 1.00 + 1 replica of kv pressure (0.95 > 0.9) = 2.00
        (0, 0.0, 0.0),
    ],
)
def test_decode_demand(concurrency: int, kv: float, expected: float) -> None:
    demand, reason = decode_demand(snap(0, 1, running=concurrency, kv=kv), DECODE.scaling)
    assert demand == pytest.approx(expected)
    assert f"concurrency {concurrency} / target 8" in reason


@pytest.mark.parametrize(
    ("tokens", "running", "measured", "expected"),
    [
        (60_000, 0, None, 3.0),  # 60000 / 20000 = 3 s / 1 s target = 3.00
        (60_000, 4, None, 3.5),  # 3.00 + 4 in flight / 8 = 3.50
        (60_000, 4, 30_000, 2.5),  # measured: 60000 / 30000 = 2 s -> 2.00 + 0.50 = 2.50
        (0, 0, None, 0.0),
    ],
)
def test_prefill_demand(tokens: int, running: int, measured: float | None, expected: float) -> None:
    snapshot = snap(0, 1, pool="prefill", tokens=tokens, running=running, measured=measured)
    demand, reason = prefill_demand(snapshot, PREFILL.scaling)
    assert demand == pytest.approx(expected)
    assert ("measured" if measured else "configured") in reason


@pytest.mark.parametrize(
    ("ready", "concurrency", "kv", "expected"),
    [
        (2, 16, 0.0, 2),  # steady: 16 / 8 = 2.00 = current -> 2
        (5, 37, 0.0, 5),  # 37 / 8 = 4.62 within 10% x 5 = 0.5 of 5 -> hold 5 (hysteresis)
        (4, 37, 0.0, 5),  # 4.62 - 4 = 0.62 > 0.4 -> ceil(4.62) = 5
        (1, 8, 0.95, 2),  # 8 / 8 + 1 kv pressure = 2.00 -> 2
        (1, 0, 0.0, 1),  # idle: ceil(0) = 0 < min 1 -> 1
        (8, 200, 0.0, 8),  # 200 / 8 = 25, panic, rate max(9, 16) = 16 > max 8 -> 8
    ],
)
def test_single_decision(ready: int, concurrency: int, kv: float, expected: int) -> None:
    decision, _ = decide(
        snap(0, ready, running=concurrency, kv=kv), AutoscaleState.initial(), DECODE, Role.decode
    )
    assert decision.desired == expected
    assert decision.current == ready
    assert decision.reason.endswith(f"desired {expected} (current {ready})")


def test_steady_load_never_moves() -> None:
    drive = Drive(DECODE, Role.decode, ready=2)
    # 16 / 8 = 2.00 every second for 60 s -> 2 throughout
    assert drive.run(60, running=16) == [2] * 60


def test_ten_x_burst_panics_and_climbs_at_the_rate_limit() -> None:
    drive = Drive(DECODE, Role.decode, ready=1)
    assert drive.run(10, running=8) == [1] * 10  # 8 / 8 = 1.00 -> 1
    burst = [drive.tick(running=80) for _ in range(4)]
    # t=10: panic avg (1 + 10) / 2 = 5.5 >= 2 x 1 ready -> panic, ceil 5.5 = 6, rate max(2, 2) = 2
    # t=11: panic avg (10 + 10) / 2 = 10 >= 2 x 2 -> 10, rate max(3, 2 x 2) = 4
    # t=12: 10 >= 2 x 4 -> 10, rate 2 x 4 = 8; t=13: 10 < 2 x 8, still panicking, max 8 -> 8
    assert [d.desired for d in burst] == [2, 4, 8, 8]
    assert all(d.panic for d in burst)
    assert "PANIC" in burst[0].reason and "up rate" in burst[0].reason


def test_decay_after_burst_steps_down_one_at_a_time_after_panic_ends() -> None:
    drive = Drive(DECODE, Role.decode, ready=1)
    drive.run(10, running=8)
    drive.run(4, running=80)  # -> 8 replicas, last panic trigger at t=12 (10 >= 2 x 4)
    decay = [drive.tick(running=0) for _ in range(40)]
    desired = [d.desired for d in decay]
    # panicking never scales down: 8 until t = 12 + 10 s stable window = 22 (9 ticks from t=14)
    assert desired[:8] == [8] * 8
    assert all(d.desired >= d.current for d in decay if d.panic)
    assert not decay[8].panic and "panic over" in decay[8].reason
    # then the 5 s scale-down delay, then -1 per decision down to min 1
    assert desired == sorted(desired, reverse=True)
    steps = [a - b for a, b in zip(desired, desired[1:], strict=False)]
    assert max(steps) == 1
    assert desired[-1] == 1
    first_down = desired.index(7)
    assert first_down >= 8 + 5  # panic over at index 8, then held 5 s


def test_panic_entry_and_exit_times() -> None:
    drive = Drive(DECODE, Role.decode, ready=2)
    drive.run(5, running=16)  # t=0..4 steady at 2
    entry = drive.tick(running=48)
    # t=5: panic avg (2 + 6) / 2 = 4.0 >= 2 x 2 -> panic, target ceil(4) = 4
    assert entry.panic and entry.desired == 4
    trail = [drive.tick(running=16) for _ in range(12)]
    # t=6: panic avg (6 + 2) / 2 = 4 >= 2 x 4? no. Last trigger t=5; stays in panic (never below 4)
    # until t >= 5 + 10 = 15 (index 9), then out of panic
    assert [d.panic for d in trail] == [True] * 9 + [False] * 3
    assert all(d.desired == 4 for d in trail[:9])


def test_flapping_input_does_not_flap_output() -> None:
    drive = Drive(DECODE, Role.decode, ready=2)
    drive.run(10, running=16)  # 16 / 8 = 2.00 fills the stable window
    out = []
    for second in range(60):
        # 4 and 28 alternating: demand 0.5 / 3.5; stable avg 2.00..2.15, within 10% x 2 of 2;
        # panic avg (0.5 + 3.5) / 2 = 2.00 or (2 + 3.5) / 2 = 2.75 < 2 x 2 -> no panic
        out.append(drive.tick(running=4 if second % 2 else 28).desired)
    assert out == [2] * 60
    drive = Drive(DECODE, Role.decode, ready=2)
    # around a boundary: 15 / 8 = 1.88 and 17 / 8 = 2.12, both within 10% of 2 -> 2
    assert drive.run(1, running=15) + drive.run(1, running=17) == [2, 2]
    assert [drive.tick(running=15 if s % 2 else 17).desired for s in range(40)] == [2] * 40


def test_zero_to_one_to_zero() -> None:
    drive = Drive(PREFILL, Role.prefill, ready=0)
    assert drive.run(3) == [0, 0, 0]  # nothing queued, min 0 -> stays 0
    wake = drive.tick(queued=1, tokens=600)
    # t=3: 600 / 20000 = 0.03 s -> 0.03 < 1 but 1 held -> 1; scale-from-zero, no delay
    assert wake.desired == 1 and wake.current == 0 and "held" in wake.reason
    assert drive.run(5, running=1) == [1] * 5  # 1 / 8 in flight = 0.12 -> ceil 1
    idle = drive.run(30)
    # idle from t=9: the last busy sample (t=8) leaves the 10 s window at t=18 -> target 0;
    # then the 5 s down delay; grace 10 s from t=9 has passed -> 0 at t=23 (index 14)
    assert idle[:14] == [1] * 14 and idle[14:] == [0] * 16
    back = drive.tick(queued=2, tokens=4000)
    assert back.desired == 1  # held at zero -> straight back to 1


def test_scale_to_zero_waits_for_grace() -> None:
    spec = PREFILL.model_copy(
        update={"scaling": PREFILL.scaling.model_copy(update={"scale_to_zero_grace_s": 30})}
    )
    drive = Drive(spec, Role.prefill, ready=1)
    idle = [drive.tick() for _ in range(40)]
    # demand 0 from t=0 but the last replica waits 30 s of idleness
    assert [d.desired for d in idle] == [1] * 30 + [0] * 10
    assert "scale-to-zero grace 30 s" in idle[29].reason


def test_the_grace_counts_from_ready_not_from_the_start_of_a_slow_cold_start() -> None:
    # woken from zero, the replica takes 25 s to start (> the 10 s grace) with no demand left:
    # it is kept while starting and for the grace once ready, not stopped mid-start
    state = AutoscaleState.initial()
    desired = []
    for now in range(40):
        ready, starting = (0, 1) if now < 25 else (1, 0)
        snapshot = snap(float(now), ready, pool="prefill", starting=starting)
        decision, state = decide(snapshot, state, PREFILL, Role.prefill)
        desired.append(decision.desired)
    assert desired[:35] == [1] * 35  # 25 s starting + 10 s grace from t=25
    assert desired[35:] == [0] * 5


@pytest.mark.parametrize(
    ("ready", "concurrency", "low", "high", "expected"),
    [
        (3, 0, 3, 8, 3),  # 0 demand -> min 3
        (1, 0, 3, 8, 3),  # below min (e.g. after a profile switch) -> straight to 3
        (6, 48, 1, 4, 4),  # 48 / 8 = 6 but above max 4 -> 4
    ],
)
def test_min_max_clamps(ready: int, concurrency: int, low: int, high: int, expected: int) -> None:
    spec = DECODE.model_copy(update={"replicas": Replicas(min=low, max=high)})
    state = AutoscaleState.initial()
    # idle for longer than the delay so the down path is free to act
    for second in range(20):
        decision, state = decide(snap(second, ready, running=concurrency), state, spec, Role.decode)
    assert decision.desired == expected


@pytest.mark.parametrize(
    ("ready", "concurrency", "rate", "step", "expected"),
    [
        (3, 160, 2.0, 1, 6),  # 160 / 8 = 20, up rate max(3 + 1, 2 x 3) = 6
        (3, 160, 1.0, 1, 4),  # rate 1.0: at least +1 -> 4
        (8, 0, 2.0, 1, 7),  # down step 1: 8 - 1 = 7
        (8, 0, 2.0, 3, 5),  # down step 3: 8 - 3 = 5
    ],
)
def test_rate_limits(ready: int, concurrency: int, rate: float, step: int, expected: int) -> None:
    scaling = DECODE.scaling.model_copy(
        update={
            "max_scale_up_rate": rate,
            "max_scale_down_step": step,
            "scale_down_delay_s": 0,
            "panic_threshold": 1000,
        }
    )
    spec = DECODE.model_copy(update={"scaling": scaling, "replicas": Replicas(min=1, max=64)})
    decision, _ = decide(
        snap(0, ready, running=concurrency), AutoscaleState.initial(), spec, Role.decode
    )
    assert decision.desired == expected


def test_scale_up_delay_holds_then_acts() -> None:
    scaling = DECODE.scaling.model_copy(update={"scale_up_delay_s": 3, "panic_threshold": 100})
    drive = Drive(DECODE.model_copy(update={"scaling": scaling}), Role.decode, ready=1)
    # 24 / 8 = 3 from t=0; stable avg 3 -> 3, held until 3 s have passed
    out = [drive.tick(running=24) for _ in range(5)]
    assert [d.desired for d in out] == [1, 1, 1, 2, 3]  # t=3: up, rate max(2, 2) = 2; then 3
    assert "up held 0 s < delay 3 s" in out[0].reason


def test_kv_pressure_adds_a_replica() -> None:
    drive = Drive(DECODE, Role.decode, ready=1)
    # 4 / 8 = 0.5 + 1 (kv 0.97 > 0.9) = 1.5 -> ceil 2
    assert drive.run(2, running=4, kv=0.97) == [2, 2]


def test_prefill_backlog_scales_prefill_not_on_running_count() -> None:
    drive = Drive(PREFILL, Role.prefill, ready=1)
    # 100,000 queued tokens / 20,000 tok/s = 5 s / 1 s = 5.00 + 8 / 8 in flight = 6.00
    # panic avg 6 >= 2 x 1 -> ceil 6, rate max(2, 2) = 2; then 6 >= 2 x 2 -> 4; then 6
    assert drive.run(3, tokens=100_000, running=8) == [2, 4, 6]
    measured = Drive(PREFILL, Role.prefill, ready=4)
    # measured 50,000 tok/s: 100,000 / 50,000 = 2 s -> 2.00 + 1.00 = 3.00; not a panic (3 < 8)
    # stable avg 3 -> 3 only after the 5 s down delay
    out = measured.run(7, tokens=100_000, running=8, measured=50_000)
    assert out == [4, 4, 4, 4, 4, 3, 3]
