"""Adapter-aware placement: resident first (in the picker's order), then a free slot, then the
least recently used idle adapter makes room, never one a request in flight uses."""

from __future__ import annotations

import pytest

from pdserve.policies.adapters import ReplicaAdapters, place_adapter

pytestmark = pytest.mark.unit


def test_a_replica_with_the_adapter_resident_wins_over_a_better_ranked_one_without() -> None:
    replicas = [ReplicaAdapters("r1"), ReplicaAdapters("r2", {"pirate": 5.0})]
    placed = place_adapter("pirate", replicas, max_loras=2)
    assert placed is not None
    assert (placed.replica_id, placed.load, placed.evict) == ("r2", None, None)


def test_none_resident_loads_on_the_first_with_a_free_slot() -> None:
    replicas = [ReplicaAdapters("r1", {"a": 1.0, "b": 2.0}), ReplicaAdapters("r2", {"a": 1.0})]
    placed = place_adapter("pirate", replicas, max_loras=2)
    assert placed is not None
    assert (placed.replica_id, placed.load, placed.evict) == ("r2", "pirate", None)


def test_all_full_evicts_the_least_recently_used_idle_adapter() -> None:
    full = ReplicaAdapters("r1", {"a": 1.0, "b": 2.0, "c": 3.0}, in_use=frozenset({"a"}))
    placed = place_adapter("pirate", [full], max_loras=3)
    assert placed is not None
    assert (placed.load, placed.evict) == ("pirate", "b")  # a is older but in use
    assert "evict b" in placed.reason


def test_every_resident_adapter_in_use_means_no_placement() -> None:
    busy = ReplicaAdapters("r1", {"a": 1.0}, in_use=frozenset({"a"}))
    assert place_adapter("pirate", [busy], max_loras=1) is None
    assert place_adapter("pirate", [], max_loras=1) is None
