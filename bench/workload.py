"""Workloads: arrival processes, request classes and their mix, and CSV traces.

Pure and vectorised (numpy, a seeded Generator passed in), so the load generator and the
cluster simulator draw the same workloads, the simulator a million requests in milliseconds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FloatArray = np.ndarray
RateFunction = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True)
class RequestClass:
    """A kind of request: mean prompt and output lengths, each drawn within +-jitter."""

    name: str
    prompt_tokens: int
    output_tokens: int
    jitter: float = 0.25


CLASSES: dict[str, RequestClass] = {
    "chat": RequestClass("chat", prompt_tokens=128, output_tokens=128),
    "rag": RequestClass("rag", prompt_tokens=1800, output_tokens=16, jitter=0.1),
    "gen": RequestClass("gen", prompt_tokens=64, output_tokens=512),
}
DEFAULT_MIX: dict[str, float] = {"chat": 0.6, "rag": 0.3, "gen": 0.1}


@dataclass(frozen=True)
class Requests:
    """Requests as parallel arrays, sorted by arrival time (seconds from the start)."""

    arrival: FloatArray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    kind: np.ndarray  # index into `kinds`
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.arrival)


def poisson_arrivals(rate: float, duration_s: float, rng: np.random.Generator) -> FloatArray:
    """Arrival times of a Poisson process of `rate` per second over [0, duration)."""
    if rate <= 0 or duration_s <= 0:
        return np.empty(0)
    expected = rate * duration_s
    count = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, size=count))
    while times[-1] < duration_s:  # rare: draw more
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=count))
        times = np.concatenate([times, more])
    return times[times < duration_s]


def fixed_arrivals(interval_s: float, duration_s: float, offset_s: float = 0.0) -> FloatArray:
    """One arrival every `interval_s`, the first at `offset_s`."""
    return np.arange(offset_s, duration_s, interval_s, dtype=float)


def modulated_arrivals(
    rate: RateFunction, peak_rate: float, duration_s: float, rng: np.random.Generator
) -> FloatArray:
    """A Poisson process whose rate varies in time (Lewis-Shedler thinning): candidates at
    `peak_rate`, each kept with probability rate(t) / peak_rate."""
    candidates = poisson_arrivals(peak_rate, duration_s, rng)
    keep = rng.random(len(candidates)) * peak_rate < rate(candidates)
    return candidates[keep]


def on_off_rate(rate_on: float, on_s: float, off_s: float, rate_off: float = 0.0) -> RateFunction:
    """Bursty traffic: `rate_on` for `on_s` seconds, then `rate_off` for `off_s`, repeating."""
    period = on_s + off_s
    return lambda t: np.where(np.mod(t, period) < on_s, rate_on, rate_off)


def burst_rate(base: float, factor: float, start_s: float, length_s: float) -> RateFunction:
    """Steady `base` traffic with one burst of `factor` x base over [start, start + length)."""
    return lambda t: np.where((t >= start_s) & (t < start_s + length_s), base * factor, base)


def diurnal_rate(mean: float, period_s: float, amplitude: float = 0.8) -> RateFunction:
    """A day compressed into `period_s`: mean x (1 - amplitude x cos(2 pi t / period))."""
    if not 0 <= amplitude <= 1:
        raise ValueError(f"amplitude must be in [0, 1], got {amplitude}")
    return lambda t: mean * (1 - amplitude * np.cos(2 * np.pi * t / period_s))


def parse_mix(text: str) -> dict[str, float]:
    """'chat=0.6,rag=0.3,gen=0.1' -> weights normalised to sum 1; class names are checked."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in CLASSES:
            raise ValueError(f"unknown request class {name!r}; known: {', '.join(CLASSES)}")
        weights[name] = float(value or 1)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"mix {text!r} has no positive weight")
    return {name: weight / total for name, weight in weights.items()}


def _draw_lengths(mean: int, jitter: float, size: int, rng: np.random.Generator) -> np.ndarray:
    spread = rng.uniform(1 - jitter, 1 + jitter, size=size)
    return np.maximum(1, np.rint(mean * spread)).astype(np.int64)


def with_mix(arrival: FloatArray, mix: Mapping[str, float], rng: np.random.Generator) -> Requests:
    """Give each arrival a class drawn from `mix` and lengths drawn from that class."""
    kinds = tuple(mix)
    probabilities = np.array([mix[name] for name in kinds], dtype=float)
    kind = rng.choice(len(kinds), size=len(arrival), p=probabilities / probabilities.sum())
    prompt = np.empty(len(arrival), dtype=np.int64)
    output = np.empty(len(arrival), dtype=np.int64)
    for index, name in enumerate(kinds):
        chosen = kind == index
        spec = CLASSES[name]
        prompt[chosen] = _draw_lengths(spec.prompt_tokens, spec.jitter, int(chosen.sum()), rng)
        output[chosen] = _draw_lengths(spec.output_tokens, spec.jitter, int(chosen.sum()), rng)
    return Requests(np.sort(arrival), prompt, output, kind.astype(np.int64), kinds)


def read_trace(path: str | Path) -> Requests:
    """A CSV trace with a header `t,prompt_tokens,output_tokens` (t in seconds); a request's
    class is `rag` when its prompt is at least 1,024 tokens, else `chat`."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"t", "prompt_tokens", "output_tokens"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: trace needs columns t, prompt_tokens, output_tokens")
    arrival = np.array([float(r["t"]) for r in rows])
    prompt = np.array([int(r["prompt_tokens"]) for r in rows], dtype=np.int64)
    output = np.array([int(r["output_tokens"]) for r in rows], dtype=np.int64)
    order = np.argsort(arrival, kind="stable")
    kind = (prompt[order] >= 1024).astype(np.int64)
    return Requests(arrival[order], prompt[order], output[order], kind, ("chat", "rag"))


def write_trace(requests: Requests, path: str | Path) -> None:
    """Write `requests` as a CSV trace that `read_trace` reads back."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "prompt_tokens", "output_tokens"])
        for t, p, o in zip(
            requests.arrival, requests.prompt_tokens, requests.output_tokens, strict=True
        ):
            writer.writerow([f"{t:.6f}", int(p), int(o)])
