"""A replica's state derived from its observations, and the vLLM gauges read off /metrics."""

from __future__ import annotations

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.pools.replica import Replica, ReplicaState, parse_worker_metrics, replica_state

pytestmark = pytest.mark.unit


def _replica(**observed: object) -> Replica:
    replica = Replica(handle=ReplicaHandle("r1", "decode", "http://127.0.0.1:1"))
    for key, value in observed.items():
        setattr(replica, key, value)
    return replica


STATES = [
    ({}, ReplicaState.starting),  # launched, never healthy
    ({"healthy": True, "ever_healthy": True}, ReplicaState.ready),
    ({"healthy": False, "ever_healthy": True}, ReplicaState.failed),  # ejected or probe failed
    ({"healthy": True, "ever_healthy": True, "draining": True}, ReplicaState.draining),
    ({"healthy": True, "ever_healthy": True, "alive": False}, ReplicaState.failed),
    ({"alive": False, "draining": True}, ReplicaState.failed),  # a dead process is dead
]


@pytest.mark.parametrize(("observed", "state"), STATES)
def test_replica_state(observed: dict[str, object], state: ReplicaState) -> None:
    assert replica_state(_replica(**observed)) is state


def test_eject_then_healthy_probe_readmits() -> None:
    replica = _replica()
    replica.observe_health(True)
    replica.eject()
    assert replica_state(replica) is ReplicaState.failed
    replica.observe_health(True)
    assert replica_state(replica) is ReplicaState.ready


METRICS_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.5
vllm:num_requests_running_other 99
vllm:prompt_tokens_total{model_name="tiny"} 1234.0
"""


def test_parse_worker_metrics_sums_engines_and_takes_max_kv() -> None:
    # running 3 + 2 = 5; kv max(0.25, 0.5) = 0.5; unrelated series ignored
    assert parse_worker_metrics(METRICS_TEXT) == {"running": 5.0, "waiting": 4.0, "kv_usage": 0.5}
