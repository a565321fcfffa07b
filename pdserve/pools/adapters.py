"""Which LoRA adapters each replica holds, as the gateway made it hold them and as the replica
itself lists them.

A replica first seen holds its model's start-loaded adapters (`--lora-modules`); the gateway
records every load and unload it sends after that, when each adapter was last used, and how
many requests on their way to the replica need each one (an adapter a request is being sent
with is never evicted under it). One lock per replica orders its loads and unloads. Each scrape
of a replica's `/v1/models` replaces what it holds with what it lists (`learn`): a worker
restarted under the same id holds only its start adapters again, and one loaded outside the
gateway is known. The placement rules themselves are the pure `policies.adapters.place_adapter`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pdserve.policies.adapters import ReplicaAdapters


@dataclass
class ReplicaResidency:
    resident: dict[str, float] = field(default_factory=dict)  # adapter -> last used (clock)
    in_use: Counter[str] = field(default_factory=Counter)  # adapter -> requests being sent
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changes: int = 0  # loads and unloads recorded (a listing taken across one is stale)

    def loaded(self, adapter: str, now: float) -> None:
        self.resident[adapter] = now
        self.changes += 1

    def unloaded(self, adapter: str) -> None:
        self.resident.pop(adapter, None)
        self.changes += 1

    def view(self, replica_id: str) -> ReplicaAdapters:
        busy = frozenset(name for name, count in self.in_use.items() if count > 0)
        return ReplicaAdapters(replica_id, dict(self.resident), busy)


class AdapterResidency:
    """Residency per replica id."""

    def __init__(self) -> None:
        self._replicas: dict[str, ReplicaResidency] = {}

    def of(self, replica_id: str, at_start: Iterable[str] = ()) -> ReplicaResidency:
        """A replica's residency; one first seen holds the adapters loaded at its start."""
        state = self._replicas.get(replica_id)
        if state is None:
            state = self._replicas[replica_id] = ReplicaResidency({n: 0.0 for n in at_start})
        return state

    def resident_on(self, replica_id: str) -> list[str]:
        state = self._replicas.get(replica_id)
        return sorted(state.resident) if state is not None else []

    def holding(self, adapter: str) -> set[str]:
        """The replicas that hold `adapter`."""
        return {rid for rid, state in self._replicas.items() if adapter in state.resident}

    def changes(self, replica_id: str) -> int:
        """The replica's count of recorded loads and unloads (taken before a listing)."""
        state = self._replicas.get(replica_id)
        return state.changes if state is not None else 0

    def learn(self, replica_id: str, listed: Iterable[str], changes: int) -> bool:
        """The replica holds what its `/v1/models` listed: adapters it no longer lists are
        gone, ones it lists that the gateway did not load are resident (used at 0: the first
        to make room). Skipped (False) when a load or unload was recorded since `changes` was
        taken, before the listing: the listing may predate it."""
        state = self.of(replica_id)
        if state.changes != changes:
            return False
        names = set(listed)
        state.resident = {n: state.resident.get(n, 0.0) for n in sorted(names)}
        return True

    def forget(self, replica_id: str) -> None:
        """A replica gone (or restarted): what it held is unknown again."""
        self._replicas.pop(replica_id, None)
