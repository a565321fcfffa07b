"""`pdserve up`'s start lines: each worker's phase (launching, loading weights, warming up,
ready) with the seconds since it was launched, one line each time a worker's phase changes.

Pure: the phase comes from the lines a worker's log gained (`phase_of_lines`, on vLLM's own
log lines) and the replica state the gateway's probes give it in GET /admin/pools; `advance`
turns what was seen at a poll into the new lines to print. The reading (HTTP, log files) is in
`pdserve.up`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum


class Phase(IntEnum):
    """A worker's start, in order; a worker never goes back to an earlier phase."""

    launching = 0
    loading_weights = 1
    warming_up = 2
    ready = 3
    failed = 4

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


TOOK = re.compile(r"(?:Loading weights|Model loading) took .*?([0-9]+(?:\.[0-9]+)?) s")
# vLLM 0.32's log lines that open a phase (tests/data/vllm-0.32-cpu-start.log is a real start)
PHASE_MARKERS: tuple[tuple[str, Phase], ...] = (
    ("Starting to load model", Phase.loading_weights),
    ("Loading safetensors checkpoint shards", Phase.loading_weights),
    ("Loading weights took", Phase.warming_up),
    ("Model loading took", Phase.warming_up),
)


def phases_of_lines(lines: Iterable[str], current: Phase) -> list[tuple[Phase, str]]:
    """The phases after `current` that the log lines open, in order, each with its line."""
    passed: list[tuple[Phase, str]] = []
    for line in lines:
        for marker, opens in PHASE_MARKERS:
            if opens > (passed[-1][0] if passed else current) and marker in line:
                passed.append((opens, line))
    return passed


def phase_of_lines(lines: Iterable[str], current: Phase = Phase.launching) -> Phase:
    """The latest phase the log lines show, never earlier than `current`."""
    passed = phases_of_lines(lines, current)
    return passed[-1][0] if passed else current


def detail(line: str) -> str:
    """What a phase's opening line says worth showing: vLLM's own weight-loading seconds."""
    took = TOOK.search(line)
    return f"(weights loaded in {took.group(1)} s)" if took else ""


@dataclass(frozen=True)
class Seen:
    """What a poll saw of one worker."""

    replica: str
    pool: str
    state: str  # the gateway's replica state: starting, ready, draining, failed
    new_log_lines: tuple[str, ...]
    launched_at: float  # on the same clock as `now`


@dataclass(frozen=True)
class Start:
    """A worker's start as printed so far."""

    pool: str
    phase: Phase
    launched_at: float


STATE_PHASES = {"ready": Phase.ready, "failed": Phase.failed}


def advance(
    known: Mapping[str, Start], seen: Iterable[Seen], now: float
) -> tuple[dict[str, Start], list[str]]:
    """The starts after this poll, and a line for each phase a worker entered since the last
    (a new worker's first is `launching`; phases passed within one poll get a line each, at
    the seconds of the poll that saw them)."""
    starts, lines = dict(known), []
    for worker in seen:
        before = starts.get(worker.replica)
        launched = before.launched_at if before is not None else worker.launched_at
        current = before.phase if before is not None else Phase.launching
        entered = [] if before is not None else [(Phase.launching, "")]
        entered += phases_of_lines(worker.new_log_lines, current)
        state = STATE_PHASES.get(worker.state, Phase.launching)
        if state > (entered[-1][0] if entered else current):
            entered.append((state, ""))
        for phase, line in entered:
            lines.append(progress_line(worker.replica, phase, now - launched, detail(line)))
        if entered:
            starts[worker.replica] = Start(worker.pool, entered[-1][0], launched)
    return starts, lines


def progress_line(replica: str, phase: Phase, seconds: float, note: str = "") -> str:
    line = f"  {replica:<12} {phase.label:<16} {max(seconds, 0.0):6.1f} s"
    return f"{line}  {note}" if note else line
