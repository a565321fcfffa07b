"""Adapter-aware placement: which replica serves a request for a LoRA adapter, and whether the
adapter must be loaded there first (and which resident adapter makes room for it).

Pure: the replicas with room (in the picker's order of preference), what each has resident and
when each resident adapter was last used, the adapters in use by requests in flight, and vLLM's
`max_loras` in; a placement with its reason out.

The rules, in order:
1. a replica with room that has the adapter resident (the first in the picker's order): no load;
2. else a replica with room and a free adapter slot: load there;
3. else a replica with room whose least recently used resident adapter no request in flight
   uses: unload that one, load the adapter (vLLM keeps at most `max_loras` per replica);
4. else none: the request waits for room like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaAdapters:
    """One replica as adapter placement sees it."""

    id: str
    resident: Mapping[str, float] = field(default_factory=dict)  # adapter -> last used (clock)
    in_use: frozenset[str] = frozenset()  # adapters of requests in flight on it


@dataclass(frozen=True)
class AdapterPlacement:
    replica_id: str
    load: str | None  # the adapter to load before sending (None: resident already)
    evict: str | None  # the resident adapter to unload first to make room
    reason: str


def place_adapter(
    adapter: str, replicas: Sequence[ReplicaAdapters], max_loras: int
) -> AdapterPlacement | None:
    """Where a request for `adapter` goes among `replicas` (those with room, best first)."""
    if max_loras < 1:
        raise ValueError("max_loras must be >= 1")
    for replica in replicas:
        if adapter in replica.resident:
            return AdapterPlacement(replica.id, None, None, f"{adapter} resident on {replica.id}")
    for replica in replicas:
        if len(replica.resident) < max_loras:
            used = len(replica.resident)
            return AdapterPlacement(
                replica.id, adapter, None, f"load {adapter} on {replica.id} ({used}/{max_loras})"
            )
    for replica in replicas:
        victim = least_recently_used(replica)
        if victim is not None:
            return AdapterPlacement(
                replica.id,
                adapter,
                victim,
                f"{replica.id} full ({max_loras}/{max_loras}): evict {victim} (least recently "
                f"used, idle), load {adapter}",
            )
    return None


def least_recently_used(replica: ReplicaAdapters) -> str | None:
    """The resident adapter used longest ago that no request in flight uses; None if all are."""
    idle = [(used, name) for name, used in replica.resident.items() if name not in replica.in_use]
    return min(idle)[1] if idle else None
