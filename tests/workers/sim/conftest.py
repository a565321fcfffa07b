"""Simulated worker processes shared by the sim integration tests (started once per session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pdserve.workers.sim.launch import SimFleet


@pytest.fixture(scope="session")
def fleet() -> Iterator[SimFleet]:
    with SimFleet() as sims:
        yield sims


@pytest.fixture(scope="session")
def both_url(fleet: SimFleet) -> str:
    return fleet.start("both")


@pytest.fixture(scope="session")
def prefill_url(fleet: SimFleet) -> str:
    return fleet.start("prefill")


@pytest.fixture(scope="session")
def decode_url(fleet: SimFleet) -> str:
    return fleet.start("decode")
