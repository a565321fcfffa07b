"""Table tests of the routing snapshot: both pools' prefill work from plain observations."""

from __future__ import annotations

import pytest

from pdserve.policies.routing_snapshot import (
    PoolWork,
    ReplicaWork,
    RoutingObservation,
    routing_snapshot,
)
from pdserve.policies.types import RoutingSnapshot

pytestmark = pytest.mark.unit

IDLE = ReplicaWork(serving=True)


def _prefill(*replicas: ReplicaWork, queued: int = 0, measured: float | None = None) -> PoolWork:
    return PoolWork(replicas, queued, measured, configured_tokens_per_s=300.0)


def _decode(*replicas: ReplicaWork, measured: float | None = None) -> PoolWork:
    return PoolWork(replicas, 0, measured, configured_tokens_per_s=200.0)


SNAPSHOTS = [
    pytest.param(
        RoutingObservation(0.0, None, _decode(IDLE)),
        RoutingSnapshot(0, 0, 1.0),
        id="no prefill pool: nothing to weigh",
    ),
    pytest.param(
        RoutingObservation(0.0, _prefill(IDLE), None),
        RoutingSnapshot(1, 0, 300.0),
        id="unmeasured: the configured rate; no decode pool: no local work",
    ),
    pytest.param(
        RoutingObservation(0.0, _prefill(IDLE, measured=450.0), _decode(IDLE, measured=90.0)),
        RoutingSnapshot(1, 0, 450.0, 1, 0, 90.0),
        id="measured rates replace the configured ones",
    ),
    pytest.param(
        # 500 held + 3600 in flight since t=100, 3 s at 300 tok/s done: 500 + 3600 - 900 = 3200
        RoutingObservation(
            103.0,
            _prefill(ReplicaWork(True, 3600, busy_since=100.0), queued=500),
            _decode(IDLE),
        ),
        RoutingSnapshot(1, 3200, 300.0, 1, 0, 200.0),
        id="the backlog is held tokens plus what the replica has not done yet",
    ),
    pytest.param(
        # its latest first token at 106 (later than busy_since): 1800 - (107 - 106) x 300 = 1500
        RoutingObservation(
            107.0,
            _prefill(ReplicaWork(True, 1800, busy_since=100.0, prefill_done_at=106.0)),
            _decode(IDLE),
        ),
        RoutingSnapshot(1, 1500, 300.0, 1, 0, 200.0),
        id="progress counts from the latest finished prefill",
    ),
    pytest.param(
        # 1800 - (200 - 100) x 300 < 0: nothing left, never negative
        RoutingObservation(200.0, _prefill(ReplicaWork(True, 1800, busy_since=100.0)), None),
        RoutingSnapshot(1, 0, 300.0),
        id="a long-overdue prompt counts as done",
    ),
    pytest.param(
        # a draining replica takes no new prompt but still owes 1000 - 1 x 300 = 700 tokens
        RoutingObservation(
            11.0, _prefill(ReplicaWork(False, 1000, busy_since=10.0), IDLE), _decode(IDLE)
        ),
        RoutingSnapshot(1, 700, 300.0, 1, 0, 200.0),
        id="replicas that do not serve owe their backlog but are not ready",
    ),
    pytest.param(
        # local: 1800 + 600 on the two serving decode replicas; the starting one's 900 is not
        # theirs to wait for; running 3 + 2 = 5 streams would stall behind a local prefill
        RoutingObservation(
            0.0,
            _prefill(IDLE),
            _decode(
                ReplicaWork(True, local_prefill_tokens=1800, running=3),
                ReplicaWork(True, local_prefill_tokens=600, running=2),
                ReplicaWork(False, local_prefill_tokens=900, running=4),
            ),
        ),
        RoutingSnapshot(1, 0, 300.0, 2, 2400, 200.0, local_running=5),
        id="the decode pool's own prefills and streams, over its serving replicas",
    ),
]


@pytest.mark.parametrize(("observed", "expected"), SNAPSHOTS)
def test_routing_snapshot(observed: RoutingObservation, expected: RoutingSnapshot) -> None:
    assert routing_snapshot(observed) == expected
