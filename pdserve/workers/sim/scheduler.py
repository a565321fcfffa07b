"""Continuous batching over virtual KV blocks, as vLLM's v1 scheduler does it, without a clock.

Each step decodes one token for every running sequence whose prompt is computed, then fills the
rest of the token budget with prompt chunks (chunked prefill), admitting waiting sequences while
sequence slots and KV blocks last. The step's duration comes from the timing model, so a long
prompt chunk stretches the step every running decode waits on. Blocks are reserved for a
sequence's prompt plus its `max_tokens` when admitted, so a running sequence is never preempted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pdserve.workers.sim.timing import Timing


@dataclass
class Sequence:
    id: str
    prompt_tokens: int
    max_tokens: int  # tokens this sequence will generate (after any stop cut)
    computed: int = 0  # prompt tokens whose KV exists (computed here or pulled)
    generated: int = 0
    blocks: int = 0

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_tokens

    @property
    def finished(self) -> bool:
        return self.generated >= self.max_tokens

    @property
    def context(self) -> int:
        return self.computed + self.generated


@dataclass(frozen=True)
class Step:
    chunks: tuple[tuple[Sequence, int], ...]  # (sequence, prompt tokens computed this step)
    decodes: tuple[Sequence, ...]
    decode_context: int

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    @property
    def sequences(self) -> tuple[Sequence, ...]:
        return tuple(seq for seq, _ in self.chunks) + self.decodes


@dataclass
class Scheduler:
    timing: Timing
    waiting: deque[Sequence] = field(default_factory=deque)
    running: list[Sequence] = field(default_factory=list)
    held_blocks: int = 0  # blocks pinned for remote decodes (prefill leases)

    @property
    def used_blocks(self) -> int:
        return self.held_blocks + sum(seq.blocks for seq in self.running)

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.used_blocks / self.timing.num_blocks)

    def blocks_for(self, tokens: int) -> int:
        return min(self.timing.num_blocks, math.ceil(tokens / self.timing.block_size))

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq_id: str) -> None:
        """Drop a sequence (finished or aborted) and free its blocks."""
        self.running = [seq for seq in self.running if seq.id != seq_id]
        self.waiting = deque(seq for seq in self.waiting if seq.id != seq_id)

    def hold(self, blocks: int) -> None:
        self.held_blocks += blocks

    def release(self, blocks: int) -> None:
        self.held_blocks = max(0, self.held_blocks - blocks)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.timing.max_num_seqs:
            head = self.waiting[0]
            need = self.blocks_for(head.prompt_tokens + head.max_tokens)
            if self.used_blocks + need > self.timing.num_blocks:
                return  # first come, first served: the head waits for blocks
            head.blocks = need
            self.running.append(self.waiting.popleft())

    def schedule(self) -> Step | None:
        """The next step, or None when there is nothing to run."""
        self._admit()
        decodes = tuple(s for s in self.running if not s.prefilling and not s.finished)
        budget = self.timing.max_num_batched_tokens - len(decodes)
        chunks: list[tuple[Sequence, int]] = []
        for seq in self.running:
            if budget <= 0:
                break
            if seq.prefilling:
                take = min(budget, seq.prompt_tokens - seq.computed)
                chunks.append((seq, take))
                budget -= take
        if not chunks and not decodes:
            return None
        return Step(tuple(chunks), decodes, sum(s.context for s in decodes))

    def duration(self, step: Step) -> float:
        return self.timing.step_seconds(step.prefill_tokens, len(step.decodes), step.decode_context)

    def complete(self, step: Step) -> list[Sequence]:
        """Apply a finished step; the sequences that produced a token, in order."""
        produced: list[Sequence] = []
        for seq, take in step.chunks:
            seq.computed += take
            if not seq.prefilling:  # the last prompt chunk samples the first token
                seq.generated += 1
                produced.append(seq)
        for seq in step.decodes:
            seq.generated += 1
            produced.append(seq)
        return produced
