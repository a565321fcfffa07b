"""The simulated engine's clock: steps end when the timing model says, whatever a late wake-up
(the event loop's millisecond timers, a busy machine) adds to one sleep.

The engine runs on a virtual clock whose every sleep wakes late by a seeded random amount, so the
test measures the engine's deadline arithmetic, not this machine's scheduler: with plain sleeps
the 60 late wake-ups would add up (about 90 ms over a 320 ms stream)."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from pdserve.workers.sim import roofline
from pdserve.workers.sim.engine import Engine
from pdserve.workers.sim.metrics import SimMetrics
from pdserve.workers.sim.scheduler import Sequence
from pdserve.workers.sim.timing import PRESETS

pytestmark = pytest.mark.unit

LATE_S = 3.0e-3  # the most one wake-up is late: under one 5.3 ms step


@dataclasses.dataclass
class LateClock:
    """Virtual time; each sleep ends up to LATE_S after it was asked to."""

    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(7))
    t: float = 0.0
    late_s: list[float] = dataclasses.field(default_factory=list)

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # others run first, at the time the sleep began
        late = self.rng.uniform(0.0, LATE_S)
        self.late_s.append(late)
        self.t += max(0.0, seconds) + late


async def test_a_stream_of_decode_steps_takes_the_modelled_time_in_all() -> None:
    acc = dataclasses.replace(roofline.CPU, step_overhead_s=4.0e-3)
    timing = dataclasses.replace(PRESETS["vllm-cpu-tiny"], accelerator=acc)
    clock = LateClock()
    engine = Engine(timing, SimMetrics("tiny"), clock=clock)
    runner = asyncio.create_task(engine.run())
    try:
        stamps = [clock.now() async for _ in engine.generate(Sequence("s", 16, 61))]
    finally:
        runner.cancel()
    # token k + 1 comes from a decode step over 16 prompt + k generated tokens of context
    modelled = sum(timing.step_seconds(0, 1, 16 + k) for k in range(1, 61))
    assert sum(clock.late_s) > 0.05  # plain sleeps would have run this much over
    # only the last wake-up's lateness shows in the total
    assert stamps[-1] - stamps[0] == pytest.approx(modelled, abs=LATE_S)
