"""Adapter residency re-learned from a replica's /v1/models: what it lists replaces what the
gateway recorded, unless a load or unload was recorded while the listing was on its way."""

from __future__ import annotations

import json

import pytest

from pdserve.pools.adapters import AdapterResidency
from pdserve.pools.scraper import listed_adapters

pytestmark = pytest.mark.unit


def _listing(*adapters: str) -> bytes:
    cards = [{"id": "tiny", "parent": None}] + [{"id": a, "parent": "tiny"} for a in adapters]
    return json.dumps({"object": "list", "data": cards}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_listing(), frozenset()),
        (_listing("pirate", "poet"), frozenset({"pirate", "poet"})),
        (b"not json", None),
        (b'{"data": 3}', None),
    ],
)
def test_listed_adapters_are_the_entries_with_a_parent(
    body: bytes, expected: frozenset[str] | None
) -> None:
    assert listed_adapters(body) == expected


def test_a_listing_replaces_what_the_gateway_recorded() -> None:
    residency = AdapterResidency()
    state = residency.of("r1", ["pirate"])
    state.loaded("poet", 5.0)
    before = residency.changes("r1")
    assert residency.learn("r1", ["pirate", "chef"], before)  # restarted, chef loaded outside
    assert residency.resident_on("r1") == ["chef", "pirate"]
    assert state.resident["chef"] == 0.0  # never used through this gateway: first to go
    assert residency.holding("poet") == set()


def test_a_listing_taken_across_a_load_is_skipped() -> None:
    residency = AdapterResidency()
    state = residency.of("r1", ["pirate"])
    before = residency.changes("r1")
    state.loaded("poet", 5.0)  # recorded while the listing (without poet) was on its way
    assert not residency.learn("r1", ["pirate"], before)
    assert residency.resident_on("r1") == ["pirate", "poet"]


def test_a_replica_first_seen_by_its_listing() -> None:
    residency = AdapterResidency()
    assert residency.learn("r2", ["pirate"], residency.changes("r2"))
    assert residency.holding("pirate") == {"r2"}
