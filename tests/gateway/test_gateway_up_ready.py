"""When `pdserve up` announces readiness: every pool that starts with replicas serves."""

from __future__ import annotations

import pytest

from pdserve import profile as profiles
from pdserve.up import every_pool_up

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"ready": True, "pools": {"prefill": 0, "decode": 1}}, False),  # prefill still starting
        ({"ready": True, "pools": {"prefill": 1, "decode": 1}}, True),
        ({"ready": False, "pools": {"prefill": 1, "decode": 0}}, False),
        ({"ready": True}, False),
        ("not json object", False),
    ],
)
def test_local_waits_for_prefill_and_decode(body: object, expected: bool) -> None:
    assert every_pool_up(body, profiles.load("local")) is expected


def test_a_pool_that_starts_at_zero_does_not_hold_the_banner() -> None:
    sim = profiles.load("sim")
    sim.pools["prefill"].replicas = profiles.Replicas(min=0, max=8, initial=0)
    assert every_pool_up({"pools": {"prefill": 0, "decode": 1}}, sim)
