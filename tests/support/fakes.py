"""In-memory doubles for a PoolManager without processes: an actuator whose replicas exist only
in memory, the probes' HTTP client that answers for them, and a one-pool simulated profile."""

from __future__ import annotations

from pdserve.actuators.base import ReplicaHandle
from pdserve.profile import Profile


def one_pool_profile(role: str = "both", **engine: object) -> Profile:
    """A sim profile with one pool, `decode` (1 to 4 replicas), routing standard."""
    return Profile.model_validate(
        {
            "name": "p",
            "routing": {"mode": "standard"},
            "engine": {"kind": "sim", **engine},
            "pools": {"decode": {"role": role, "replicas": {"min": 1, "max": 4}}},
        }
    )


class MemoryActuator:
    """An actuator over replicas that are all reachable by one in-memory transport."""

    def __init__(self) -> None:
        self.handles: dict[str, list[ReplicaHandle]] = {}
        self.calls: list[tuple[str, int, list[str]]] = []
        self.count = 0

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        return list(self.handles.get(pool, []))

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        self.calls.append((pool, desired, list(victims)))
        members = [h for h in self.handles.get(pool, []) if h.id not in victims]
        while len(members) < desired:
            self.count += 1
            members.append(ReplicaHandle(f"{pool}-{self.count}", pool, f"http://r{self.count}"))
        self.handles[pool] = members[:desired]

    async def close(self) -> None:
        return None


class Probes:
    """The probes' HTTP client for replicas that exist only in MemoryActuator: every worker
    answers 503 until `healthy`, then 200 and idle metrics (the real client is
    tests/gateway/test_gateway_upstream.py's)."""

    def __init__(self) -> None:
        self.healthy = False

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        if not self.healthy:
            return 503, b""
        return 200, b"vllm:num_requests_running 0\n" if url.endswith("/metrics") else b""
