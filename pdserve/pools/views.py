"""Read-only views of a pool for code outside the pools package.

`pool_work` is what the route policy sees of a pool (`policies.routing_snapshot`); `pool_view`
is what the admin API shows. Both are frozen copies, so a caller cannot change a pool through
them, and the gateway never needs to hold a `Pool` or a `Replica` to read one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pdserve.policies.routing_snapshot import PoolWork, ReplicaWork
from pdserve.policies.types import ScaleDecision
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica, replica_state
from pdserve.pools.snapshot import PoolSnapshot


def pool_work(pool: Pool) -> PoolWork:
    serving = {r.id for r in pool.serving()}
    return PoolWork(
        replicas=tuple(_replica_work(r, r.id in serving) for r in pool.replicas.values()),
        queued_prompt_tokens=pool.queue.tokens,
        measured_tokens_per_s=pool.prefill_tokens_per_s,
        configured_tokens_per_s=pool.spec.scaling.prefill_tokens_per_s,
    )


def _replica_work(replica: Replica, serving: bool) -> ReplicaWork:
    return ReplicaWork(
        serving=serving,
        inflight_prompt_tokens=replica.inflight_prompt_tokens,
        busy_since=replica.busy_since,
        prefill_done_at=replica.prefill_done_at,
        local_prefill_tokens=replica.local_prefill_tokens,
        running=replica.running,
    )


@dataclass(frozen=True)
class ReplicaView:
    id: str
    url: str
    state: str  # pools.replica.ReplicaState's value
    inflight: int
    waiting: int
    running: int
    kv_usage: float
    labels: Mapping[str, str]
    kv_fault: str | None  # why its KV is not reaching decode workers (policies.kv_proof)
    metrics_text: str | None  # the worker's last /metrics body (its KV and prefix counters)


@dataclass(frozen=True)
class PoolView:
    """One pool as the admin API and the gateway's metrics show it."""

    name: str
    role: str
    in_profile: bool  # False: a switch dropped it and it is draining
    replicas: Mapping[str, int]  # replica count per state
    desired: int
    snapshot: PoolSnapshot  # what the autoscaler reads: queue, tokens, concurrency
    prefill_tokens_per_s: float | None
    endpoints: tuple[ReplicaView, ...]
    decisions: tuple[ScaleDecision, ...]  # recent changes, oldest first
    last_decision: ScaleDecision | None


def pool_view(pool: Pool, snapshot: PoolSnapshot, in_profile: bool) -> PoolView:
    return PoolView(
        name=pool.name,
        role=pool.spec.role.value,
        in_profile=in_profile,
        replicas=pool.state_counts(),
        desired=pool.desired,
        snapshot=snapshot,
        prefill_tokens_per_s=pool.prefill_tokens_per_s,
        endpoints=tuple(_replica_view(r) for r in pool.replicas.values()),
        decisions=tuple(pool.decisions),
        last_decision=pool.last_decision,
    )


def _replica_view(replica: Replica) -> ReplicaView:
    return ReplicaView(
        id=replica.id,
        url=replica.url,
        state=replica_state(replica).value,
        inflight=replica.inflight,
        waiting=replica.waiting,
        running=replica.running,
        kv_usage=replica.kv_usage,
        labels=dict(replica.handle.labels),
        kv_fault=replica.kv_fault,
        metrics_text=replica.metrics_text,
    )
