"""The simulated engine: runs the scheduler's steps in (scaled) real time on the event loop and
hands each sequence its tokens as the steps that produce them end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pdserve.workers.sim.metrics import SimMetrics
from pdserve.workers.sim.scheduler import Scheduler, Sequence
from pdserve.workers.sim.timing import Timing


@dataclass(frozen=True)
class Faults:
    """Injected faults of one worker process (all off by default)."""

    die_after_tokens: int | None = None  # exit the process once this many tokens were generated
    prefill_fail: float = 0.0  # fraction of prefill (do_remote_decode) requests that fail (500)
    prefill_slow_s: float = 0.0  # extra seconds on every step that computes prompt tokens
    cold_start_s: float = 0.0  # seconds before the port opens (and /health answers)
    hang: bool = False  # accept connections, never answer (health included)
    refuse: bool = False  # never open the port: connections are refused
    skip_kv_pull: bool = False  # decode: recompute the prompt, never pull (no KV connector)
    error_share: float = 0.0  # fraction of completion requests answered 500 (by prompt hash)


def _die() -> None:
    os._exit(17)


class LoopClock:
    """The event loop's clock; the engine's steps end on it."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Engine:
    timing: Timing
    metrics: SimMetrics
    time_scale: float = 1.0
    faults: Faults = field(default_factory=Faults)
    die: Callable[[], None] = _die
    clock: LoopClock = field(default_factory=LoopClock)
    scheduler: Scheduler = field(init=False)
    generated_total: int = 0
    pulling: int = 0  # decode requests waiting on a KV pull (vLLM counts them waiting)
    _queues: dict[str, asyncio.Queue[int]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.timing)

    def scaled(self, seconds: float) -> float:
        return seconds / self.time_scale

    def refresh_metrics(self) -> None:
        sched = self.scheduler
        waiting = len(sched.waiting) + self.pulling
        self.metrics.set_state(len(sched.running), waiting, sched.kv_usage)

    async def run(self) -> None:
        """The step loop; runs until cancelled. Steps end on a running deadline: a late wake-up
        (the loop's millisecond timers, a busy loop) shortens the next sleep instead of adding to
        every step, so the mean gap is the modelled step time (debt is kept for one step only)."""
        clock = self.clock
        deadline = clock.now()
        while True:
            step = self.scheduler.schedule()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                deadline = clock.now()
                continue
            seconds = self.scheduler.duration(step)
            if step.chunks:
                seconds += self.faults.prefill_slow_s
            deadline = max(deadline + self.scaled(seconds), clock.now())
            await clock.sleep(deadline - clock.now())
            for seq in self.scheduler.complete(step):
                self._deliver(seq)

    def _deliver(self, seq: Sequence) -> None:
        if seq.finished:
            self.scheduler.remove(seq.id)
        queue = self._queues.get(seq.id)
        if queue is None:
            return
        queue.put_nowait(seq.generated)
        self.generated_total += 1
        self.metrics.generation_tokens.inc()
        limit = self.faults.die_after_tokens
        if limit is not None and self.generated_total >= limit:
            self.die()

    async def generate(self, seq: Sequence) -> AsyncIterator[int]:
        """Yields 1, 2, ... as each of the sequence's tokens is produced; aborts on close."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        self._queues[seq.id] = queue
        self.scheduler.add(seq)
        self._wake.set()
        try:
            while True:
                count = await queue.get()
                yield count
                if count >= seq.max_tokens:
                    return
        finally:
            self._queues.pop(seq.id, None)
            self.scheduler.remove(seq.id)
