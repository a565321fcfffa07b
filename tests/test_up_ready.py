"""When a stack is ready (`pdserve up`'s banner and pdserve.stack): /ready is 200 and every pool
has the replicas it wants ready, zero where the autoscaler wants none."""

from __future__ import annotations

from typing import Any

import pytest

from pdserve.up import stack_ready

pytestmark = pytest.mark.unit


def _pool(ready: int, desired: int, starting: int = 0, in_profile: bool = True) -> dict[str, Any]:
    replicas = {"starting": starting, "ready": ready, "draining": 0, "failed": 0}
    return {"replicas": replicas, "desired": desired, "in_profile": in_profile}


@pytest.mark.parametrize(
    ("status", "pools", "expected"),
    [
        (200, {"prefill": _pool(0, 1, starting=1), "decode": _pool(1, 1)}, False),  # starting
        (200, {"prefill": _pool(1, 1), "decode": _pool(1, 1)}, True),
        (503, {"prefill": _pool(1, 1), "decode": _pool(0, 1, starting=1)}, False),  # no decode
        (200, {"prefill": _pool(0, 0), "decode": _pool(1, 1)}, True),  # starts at zero
        # the autoscaler took an idle prefill pool to zero before its replica came up
        (200, {"prefill": _pool(0, 0, starting=0), "decode": _pool(1, 1)}, True),
        (200, {"decode": _pool(1, 2, starting=1)}, False),  # one of two
        (200, {"decode": _pool(2, 2)}, True),
        (200, {"old": _pool(0, 1, in_profile=False), "decode": _pool(1, 1)}, True),  # dropped
        (200, {"error": {"message": "admin token required"}}, False),  # a 401's body
        (200, {}, False),
        (200, "not a json object", False),
    ],
)
def test_stack_ready(status: int, pools: object, expected: bool) -> None:
    assert stack_ready(status, pools) is expected
