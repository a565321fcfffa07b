"""One pool's replicas, hold queue, picker state and recent scale decisions."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable

from pdserve.policies.picking import PickerState
from pdserve.policies.types import ScaleDecision
from pdserve.pools.hold import HoldQueue
from pdserve.pools.prefix import PrefixIndex
from pdserve.pools.replica import Replica, ReplicaState, replica_state
from pdserve.pools.workerspec import SPEC_LABEL
from pdserve.profile import PoolSpec

PREFILL_RATE_WINDOW_S = 30.0  # older prefills weigh e^-1 less per this many seconds

RECENT_DECISIONS = 20


class Pool:
    def __init__(
        self, name: str, spec: PoolSpec, spec_key: str, queue_limit: int, block_size: int = 16
    ) -> None:
        self.name = name
        self.spec = spec
        self.spec_key = spec_key  # the generation that serves; others are starting or leaving
        self.replicas: dict[str, Replica] = {}
        self.queue = HoldQueue(queue_limit)
        self.desired = spec.replicas.start
        self.picker_state = PickerState()
        self.decisions: deque[ScaleDecision] = deque(maxlen=RECENT_DECISIONS)  # changes only
        self.last_decision: ScaleDecision | None = None
        self.retiring = False  # dropped by a profile switch: draining, then removed
        self.lock = asyncio.Lock()  # one actuator change at a time
        self.prefill_tokens_per_s: float | None = None
        self._prefill_tokens = 0.0  # decayed sums behind prefill_tokens_per_s
        self._prefill_seconds = 0.0
        self._prefill_at = 0.0
        self.prefixes = PrefixIndex(block_size)
        # this pool's prompts served elsewhere (prefilled locally while it was cold) or held
        # for local prefill: they count toward its demand (`policies.admission.demand_pool`)
        self.diverted_requests = 0
        self.diverted_tokens = 0
        self.service = ServiceTime()  # how long a request keeps a replica's slot
        self.startup_s: float | None = None  # the latest launch-to-healthy time seen

    def divert(self, requests: int, tokens: int) -> None:
        self.diverted_requests = max(0, self.diverted_requests + requests)
        self.diverted_tokens = max(0, self.diverted_tokens + tokens)

    def of_generation(self, replica: Replica, key: str | None = None) -> bool:
        label = replica.handle.labels.get(SPEC_LABEL)
        return label is None or label == (key or self.spec_key)

    def serving(self, exclude: Iterable[str] = ()) -> list[Replica]:
        """Ready replicas of the serving generation that a new request may go to."""
        skip = set(exclude)
        return [
            r
            for r in self.replicas.values()
            if r.id not in skip and replica_state(r) is ReplicaState.ready and self.of_generation(r)
        ]

    def count(self, state: ReplicaState) -> int:
        return sum(1 for r in self.replicas.values() if replica_state(r) is state)

    def state_counts(self) -> dict[str, int]:
        return {state.value: self.count(state) for state in ReplicaState}

    def remove(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)
        self.prefixes.forget(replica_id)

    def members(self) -> list[Replica]:
        """Replicas that count towards the pool's size: alive and not draining."""
        return [r for r in self.replicas.values() if r.alive and not r.draining]

    def observe_prefill(self, replica: Replica, tokens: int, sent: float, now: float) -> None:
        """One prompt's prefill reached its first token: update the pool's measured per-replica
        prefill throughput. A prompt's service time runs from when the replica could start it
        (sent, or its previous prefill done: vLLM prefills in arrival order) to its first token,
        so queueing does not read as slowness. The rate is tokens over seconds, both decayed
        with time, not an average of per-prompt rates: answers that arrive in a burst (one long
        service time, then one near zero) still add up to the replica's real throughput."""
        seconds = max(0.0, now - max(sent, replica.prefill_done_at))
        replica.prefill_done_at = now
        if tokens <= 0:
            return
        decay = math.exp(-max(0.0, now - self._prefill_at) / PREFILL_RATE_WINDOW_S)
        self._prefill_at = now
        self._prefill_tokens = decay * self._prefill_tokens + tokens
        self._prefill_seconds = decay * self._prefill_seconds + seconds
        if self._prefill_seconds > 0:
            self.prefill_tokens_per_s = self._prefill_tokens / self._prefill_seconds


class ServiceTime:
    """How long a request holds a slot on the pool's replicas, by Little's law over decayed
    sums: the time-integral of requests in flight over the requests finished. Read with the
    requests in flight now, it says how many slots free up per second."""

    def __init__(self, window_s: float = PREFILL_RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.inflight = 0
        self._area = 0.0  # decayed request-seconds in flight
        self._finished = 0.0  # decayed requests finished
        self._at = 0.0

    def change(self, delta: int, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        decay = math.exp(-elapsed / self.window_s) if self._at else 1.0
        self._area = decay * self._area + self.inflight * elapsed
        self._finished = decay * self._finished + max(0, -delta)
        self._at = now
        self.inflight = max(0, self.inflight + delta)

    def mean_s(self) -> float | None:
        """Mean seconds a request kept its slot; None until one finished."""
        return self._area / self._finished if self._finished > 0 else None

    def releases_per_s(self) -> float | None:
        """Slots freed per second by the requests in flight now; None until measured."""
        mean = self.mean_s()
        if mean is None:
            return None
        return self.inflight / mean if mean > 0 else float(self.inflight)


def drain_victims(pool: Pool, count: int) -> list[Replica]:
    """Starting replicas first (no work to lose), then the least-loaded ready ones."""
    members = pool.members()

    def order(r: Replica) -> tuple[int, int, str]:
        return (0 if replica_state(r) is ReplicaState.starting else 1, r.load().load, r.id)

    return sorted(members, key=order)[:count]


async def wait_drained(replicas: list[Replica], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Until none of `replicas` has a request in flight, or the timeout; True when drained."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(r.inflight > 0 for r in replicas):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
