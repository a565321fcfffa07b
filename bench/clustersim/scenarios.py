"""The simulator's scenarios: steady, a 10x burst, a compressed day, or a CSV trace."""

from __future__ import annotations

import numpy as np

from bench import workload
from bench.workload import Requests

SCENARIOS = ("steady", "burst", "diurnal", "trace")


def build(
    name: str,
    rate: float,
    duration_s: float,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    trace: str | None = None,
) -> Requests:
    """Requests for a scenario. `burst`: `rate`, then 10 x `rate` from 1/3 of the run for 1/6
    of it; `diurnal`: one day compressed into the run, mean `rate`, peak 1.8 x mean."""
    rng = np.random.default_rng(seed)
    mix = mix or workload.DEFAULT_MIX
    if name == "trace":
        if trace is None:
            raise ValueError("scenario trace needs a CSV path")
        return workload.read_trace(trace)
    if name == "steady":
        arrival = workload.poisson_arrivals(rate, duration_s, rng)
    elif name == "burst":
        shape = workload.burst_rate(rate, 10.0, duration_s / 3, duration_s / 6)
        arrival = workload.modulated_arrivals(shape, 10 * rate, duration_s, rng)
    elif name == "diurnal":
        shape = workload.diurnal_rate(rate, duration_s, amplitude=0.8)
        arrival = workload.modulated_arrivals(shape, 1.8 * rate, duration_s, rng)
    else:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return workload.with_mix(arrival, mix, rng)
