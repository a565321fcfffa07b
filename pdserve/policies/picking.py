"""Endpoint picking within a pool: least-load, prefix-affinity, round-robin.

Pure: the replicas' loads (scraped vLLM metrics + the gateway's in-flight count), the picker's
previous state and the request's affinity key in; the chosen replica id and the new state out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.policies.types import ReplicaLoad
from pdserve.profile import Picker


@dataclass(frozen=True)
class PickerState:
    next_index: int = 0  # round-robin position


def least_loaded(replicas: Sequence[ReplicaLoad]) -> ReplicaLoad:
    """Lowest load, then lowest KV usage, then lowest id (deterministic ties)."""
    return min(replicas, key=lambda r: (r.load, r.kv_usage, r.id))


def rendezvous_score(key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_replica(replicas: Sequence[ReplicaLoad], key: str) -> ReplicaLoad:
    """Rendezvous (highest random weight) hashing: adding a replica moves only its share."""
    return max(replicas, key=lambda r: (rendezvous_score(key, r.id), r.id))


def pick(
    picker: Picker,
    replicas: Sequence[ReplicaLoad],
    state: PickerState,
    affinity_key: str | None,
    load_cap: int,
) -> tuple[str, PickerState]:
    """The replica id to send the request to, and the picker's next state."""
    if not replicas:
        raise ValueError("pick needs at least one replica")
    if picker is Picker.round_robin:
        ordered = sorted(replicas, key=lambda r: r.id)
        chosen = ordered[state.next_index % len(ordered)]
        return chosen.id, PickerState(next_index=(state.next_index + 1) % len(ordered))
    if picker is Picker.prefix_affinity and affinity_key is not None:
        preferred = preferred_replica(replicas, affinity_key)
        if preferred.load <= load_cap:
            return preferred.id, state
    return least_loaded(replicas).id, state
