"""The admin API's views, built from the manager's read-only pool views (no processes)."""

from __future__ import annotations

import pytest

from pdserve.gateway.admin import pools_view, profile_view
from pdserve.policies.types import ScaleDecision
from pdserve.pools.manager import PoolManager
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile

pytestmark = pytest.mark.unit


async def test_pools_view_shows_each_pool_its_endpoints_and_decisions() -> None:
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(one_pool_profile(), MemoryActuator(), probes, clock=lambda: 5.0)
    await manager.start()
    try:
        manager.record_decision(ScaleDecision("decode", 2, 1, "concurrency 12 > 8", at=4.0))
        manager.record_decision(ScaleDecision("decode", 2, 2, "steady", at=4.5))  # no change
        decision = {
            "desired": 2,
            "current": 1,
            "direction": "up",
            "reason": "concurrency 12 > 8",
            "panic": False,
            "at": 4.0,
        }
        endpoint = {
            "id": "decode-1",
            "url": "http://r1",
            "state": "ready",
            "inflight": 0,
            "waiting": 0,
            "running": 0,
            "kv_usage": 0.0,
            "labels": {},
            "kv_fault": None,  # the KV proof has nothing against it
        }
        assert pools_view(manager, 5.0) == {
            "decode": {
                "role": "both",
                "in_profile": True,
                "replicas": {"starting": 0, "ready": 1, "draining": 0, "failed": 0},
                "desired": 1,
                "queue_depth": 0,
                "queued_prompt_tokens": 0,
                "concurrency": 0,
                "prefill_tokens_per_s": None,
                "endpoints": [endpoint],
                "decisions": [decision],
                "last_decision": {
                    **decision,
                    "desired": 2,
                    "current": 2,
                    "direction": "none",
                    "reason": "steady",
                    "at": 4.5,
                },
            }
        }
        assert profile_view(manager)["active"] == "p"
        assert profile_view(manager)["pending"] is None
    finally:
        await manager.close()
