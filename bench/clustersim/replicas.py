"""Simulated replicas: a prefill replica (a FIFO of prompts) and a decode replica (continuous
batching with mixed prefill steps), each timed by pdserve.workers.sim.roofline's roofline model.

Nothing here emits per-token events. A decode replica keeps a token-progress counter `progress`
that advances by elapsed time / step time while its batch is unchanged; each running sequence
finishes when the counter reaches its target, so a replica needs an event only when a sequence
finishes, a prefill segment ends or its batch changes.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from pdserve.policies.types import ReplicaLoad
from pdserve.workers.sim.roofline import Accelerator, ModelCost, prefill_step_seconds, step_seconds

EPS = 1e-9
CONTEXT_BITS = 4
CHUNK_BITS = 6
FINISH_SLACK_STEPS = 1.0


@dataclass
class ReplicaLife:
    """When a replica was launched, became ready and was removed (for cost and GPU-hours)."""

    id: str
    pool: str
    price_per_hour: float
    launched_at: float
    ready_at: float
    removed_at: float | None = None
    draining: bool = False

    def seconds(self, end: float) -> float:
        return (self.removed_at if self.removed_at is not None else end) - self.launched_at


@dataclass
class Ledger:
    """Per-request outcomes (parallel lists indexed by request) and the token ITL histogram."""

    first_token: list[float]
    finish: list[float]
    route_disagg: list[bool]
    dropped: list[str | None]
    itl_hist: dict[int, float] = field(default_factory=dict)  # log bin -> tokens
    diverted: list[bool] = field(default_factory=list)  # meant for the prefill pool, not there
    done: int = 0  # requests finished or dropped
    local_prefill_tokens: int = 0  # prompts on decode replicas awaiting prefill, all replicas
    decoding: int = 0  # sequences in decode batches, all decode replicas
    diverted_requests: int = 0  # long prompts prefilled locally (or held for that), no first
    diverted_tokens: int = 0  # token yet: they count toward the prefill pool's demand

    @classmethod
    def empty(cls, n: int) -> Ledger:
        nan = math.nan
        return cls([nan] * n, [nan] * n, [False] * n, [None] * n, diverted=[False] * n)

    def divert(self, idx: int, tokens: int, on: bool) -> None:
        """Count (or stop counting) request `idx` toward the prefill pool it was meant for."""
        if self.diverted[idx] == on:
            return
        self.diverted[idx] = on
        sign = 1 if on else -1
        self.diverted_requests += sign
        self.diverted_tokens += sign * tokens

    def add_itl(self, step_s: float, tokens: float) -> None:
        key = itl_bin(step_s)
        self.itl_hist[key] = self.itl_hist.get(key, 0.0) + tokens


ITL_BINS_PER_DECADE = 50


def itl_bin(seconds: float) -> int:
    return int(math.floor(math.log10(max(seconds, 1e-7)) * ITL_BINS_PER_DECADE))


def itl_bin_upper(key: int) -> float:
    return float(10 ** ((key + 1) / ITL_BINS_PER_DECADE))


class PrefillReplica:
    """Prefills prompts one after another; the finish time is known when a prompt is assigned."""

    __slots__ = ("life", "acc", "model", "free_at", "pending", "busy_assigned", "busy_mark")

    def __init__(self, life: ReplicaLife, acc: Accelerator, model: ModelCost) -> None:
        self.life, self.acc, self.model = life, acc, model
        self.free_at = 0.0
        self.pending: deque[tuple[float, int]] = deque()  # (finish, prompt tokens)
        self.busy_assigned = 0.0
        self.busy_mark = 0.0  # busy seconds at the autoscaler's last look

    def settle(self, now: float) -> None:
        pending = self.pending
        while pending and pending[0][0] <= now:
            pending.popleft()

    def load(self, now: float) -> ReplicaLoad:
        self.settle(now)
        count = len(self.pending)
        running = 1 if count else 0
        return ReplicaLoad(self.life.id, waiting=count - running, running=running, inflight=count)

    def assign(self, now: float, tokens: int) -> float:
        """Queue a prompt; returns when its prefill finishes."""
        service = prefill_step_seconds(self.acc, self.model, tokens)
        finish = max(now, self.free_at) + service
        self.free_at = finish
        self.pending.append((finish, tokens))
        self.busy_assigned += service
        return finish

    def busy_seconds(self, now: float) -> float:
        """Seconds spent prefilling up to `now` (the GPU-utilisation signal)."""
        return self.busy_assigned - max(0.0, self.free_at - now)

    def idle(self, now: float) -> bool:
        return self.free_at <= now


class DecodeReplica:
    """Continuous batching: running sequences decode one token per step; prompts routed here
    (local prefill) are prefilled in mixed steps that stall every running decode, as vLLM's
    chunked prefill does on a unified worker; sequences whose KV arrived from a prefill replica
    join the batch directly."""

    __slots__ = (
        "life", "acc", "model", "ledger", "max_seqs", "budget", "kv_capacity", "progress",
        "last_t", "step_s", "running", "waiting", "prefill_q", "segment", "seg_end",
        "seg_chunk", "ctx_prompt", "sum_join", "reserved", "wake_at", "busy_s", "busy_mark",
        "step_bin", "local_tokens", "step_cache",
    )  # fmt: skip

    def __init__(
        self,
        life: ReplicaLife,
        acc: Accelerator,
        model: ModelCost,
        ledger: Ledger,
        max_seqs: int,
        budget: int,
        kv_capacity: int,
        step_cache: dict[tuple[int, int, int], tuple[float, int]],
    ) -> None:
        self.life, self.acc, self.model, self.ledger = life, acc, model, ledger
        self.max_seqs, self.budget, self.kv_capacity = max_seqs, budget, kv_capacity
        self.progress = 0.0  # tokens every running sequence has produced since t=0 (shared)
        self.last_t = 0.0
        self.step_s = math.inf
        self.running: list[tuple[float, int, int, float, int]] = []  # heap, see _join
        self.waiting: deque[tuple[int, int, int, bool]] = deque()  # idx, prompt, output, local
        self.prefill_q: deque[tuple[int, int, int]] = deque()  # admitted, awaiting prefill
        self.segment: list[tuple[int, int, int]] = []  # being prefilled now
        self.seg_end = math.inf
        self.seg_chunk = 0  # prompt tokens per step of the current segment
        self.ctx_prompt = 0  # prompt tokens of running sequences
        self.sum_join = 0.0  # sum of `progress` at which running sequences joined
        self.reserved = 0  # KV tokens reserved by admitted sequences (prompt + output)
        self.wake_at = math.inf  # time of the one valid wake event in the engine's heap
        self.busy_s = 0.0
        self.busy_mark = 0.0
        self.step_bin = 0  # ITL histogram bin of step_s
        self.local_tokens = 0  # prompt tokens routed here and not yet prefilled
        self.step_cache = step_cache

    # -- time ---------------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        elapsed = now - self.last_t
        if elapsed <= 0:
            return
        batch = len(self.running)
        if batch:
            steps = elapsed / self.step_s
            self.progress += steps
            hist = self.ledger.itl_hist
            hist[self.step_bin] = hist.get(self.step_bin, 0.0) + batch * steps
        if batch or self.segment:
            self.busy_s += elapsed
        self.last_t = now

    def _restep(self) -> None:
        batch = len(self.running)
        if not batch and not self.segment:
            self.step_s = math.inf
            return
        context = self.ctx_prompt + int(batch * self.progress - self.sum_join)
        # memoised per pool, the context kept to its 4 leading bits (within 6% of the KV
        # term, which is itself a fraction of a step's bytes)
        shift = max(0, context.bit_length() - CONTEXT_BITS)
        chunk = self.seg_chunk
        chunk_shift = max(0, chunk.bit_length() - CHUNK_BITS)  # the prefill chunk to 6 (1.6%)
        key = (chunk >> chunk_shift << chunk_shift, batch, context >> shift << shift)
        cached = self.step_cache.get(key)
        if cached is None:
            step = step_seconds(
                self.acc,
                self.model,
                prefill_tokens=key[0],
                decode_batch=batch,
                decode_context_tokens=key[2],
            )
            cached = self.step_cache[key] = (step, itl_bin(step))
        self.step_s, self.step_bin = cached

    def next_event(self) -> float:
        finish = math.inf
        if self.running:
            finish = self.last_t + (self.running[0][0] - self.progress) * self.step_s
        return min(finish, self.seg_end)

    # -- work ---------------------------------------------------------------------------------
    def offer(self, now: float, idx: int, prompt: int, output: int, local: bool) -> None:
        """A request arrives: `local` needs its prompt prefilled here, else its KV is here."""
        self.advance(now)
        self.waiting.append((idx, prompt, output, local))
        if local:
            self.local_tokens += prompt
            self.ledger.local_prefill_tokens += prompt
        self._admit(now)

    def wake(self, now: float) -> None:
        """The engine's event for this replica fired: finish sequences, end a segment, admit."""
        self.advance(now)
        self.wake_at = math.inf
        self._finish_due(now)
        if self.segment and now >= self.seg_end - EPS:
            self._end_segment(now)
        self._admit(now)

    def _finish_due(self, now: float) -> None:
        running, ledger = self.running, self.ledger
        # Sequences within FINISH_SLACK_STEPS of their last token leave the batch now (their
        # finish time is still the projected one): a wake that fires a little early, because
        # the batch grew since it was scheduled, then finishes work instead of rescheduling.
        due = self.progress + FINISH_SLACK_STEPS
        while running and running[0][0] <= due:
            target, idx, prompt, joined, reserve = heapq.heappop(running)
            done_at = now + (target - self.progress) * self.step_s
            ledger.finish[idx] = done_at
            ledger.decoding -= 1
            # a joined sequence's first token was estimated one step ahead; a shorter step since
            # can finish a one-token request sooner
            ledger.first_token[idx] = min(ledger.first_token[idx], done_at)
            ledger.done += 1
            self.ctx_prompt -= prompt
            self.sum_join -= joined
            self.reserved -= reserve

    def _join(self, idx: int, prompt: int, steps: int, reserve: int) -> None:
        entry = (self.progress + steps, idx, prompt, self.progress, reserve)
        heapq.heappush(self.running, entry)
        self.ledger.decoding += 1
        self.ctx_prompt += prompt
        self.sum_join += self.progress

    def _end_segment(self, now: float) -> None:
        for idx, prompt, output in self.segment:
            self.ledger.first_token[idx] = now
            self.ledger.divert(idx, prompt, False)  # its first token: no longer pending
            self.local_tokens -= prompt
            self.ledger.local_prefill_tokens -= prompt
            if output <= 1:
                self.ledger.finish[idx] = now
                self.ledger.done += 1
                self.reserved -= prompt + output
            else:
                self._join(idx, prompt, output - 1, prompt + output)
        self.segment, self.seg_end, self.seg_chunk = [], math.inf, 0

    def _slots(self) -> int:
        return len(self.running) + len(self.prefill_q) + len(self.segment)

    def _admit(self, now: float) -> None:
        waiting, joined = self.waiting, []
        while waiting and self._slots() < self.max_seqs:
            idx, prompt, output, local = waiting[0]
            if self.reserved + prompt + output > self.kv_capacity and self._slots():
                break
            waiting.popleft()
            self.reserved += prompt + output
            if local:
                self.prefill_q.append((idx, prompt, output))
            else:
                self._join(idx, prompt, output, prompt + output)
                joined.append(idx)
        if not self.segment and self.prefill_q:
            self._start_segment(now)
        else:
            self._restep()
        for idx in joined:  # their first token comes out of the next step
            self.ledger.first_token[idx] = now + self.step_s

    def _start_segment(self, now: float) -> None:
        """Prefill queued prompts together, up to the step budget of tokens (at least one)."""
        tokens = 0
        while self.prefill_q and (not self.segment or tokens + self.prefill_q[0][1] <= self.budget):
            item = self.prefill_q.popleft()
            self.segment.append(item)
            tokens += item[1]
        steps = math.ceil(tokens / self.budget)
        self.seg_chunk = math.ceil(tokens / steps)
        self._restep()
        self.seg_end = now + steps * self.step_s

    # -- what the gateway and the autoscaler see ------------------------------------------------
    def running_and_queued(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.prefill_q) + len(self.segment)

    def queued(self) -> int:
        return len(self.waiting) + len(self.prefill_q) + len(self.segment)

    def kv_usage(self) -> float:
        context = self.ctx_prompt + len(self.running) * self.progress - self.sum_join
        return min(1.0, context / self.kv_capacity)

    def load(self) -> ReplicaLoad:
        running = len(self.running)
        queued = len(self.waiting) + len(self.prefill_q) + len(self.segment)
        context = self.ctx_prompt + running * self.progress - self.sum_join
        kv = min(1.0, context / self.kv_capacity)
        return ReplicaLoad(self.life.id, queued, running, kv, running + queued)

    def queued_prompt_tokens(self) -> int:
        return self.local_tokens

    def idle(self) -> bool:
        return not self.running and not self.queued()


def kv_capacity_tokens(
    acc: Accelerator, model: ModelCost, memory_utilization: float, tensor_parallel: int = 1
) -> int:
    """KV tokens a replica holds: its memory share less the weights, over bytes per token."""
    free = acc.mem_bytes * tensor_parallel * memory_utilization - model.weight_bytes
    if free <= 0:
        raise ValueError(f"{model.name} does not fit on {tensor_parallel} x {acc.name}")
    return int(free // model.kv_bytes_per_token)
