"""The live switch carried out on an in-memory manager: what it observes of a pool, and its
steps in order (the plan itself: test_switch_plan)."""

from __future__ import annotations

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.pools.manager import PoolManager
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica, ReplicaState, replica_state
from pdserve.pools.switch import observe_pool
from pdserve.pools.switch_plan import Generation
from pdserve.pools.workerspec import SPEC_LABEL
from pdserve.profile import PoolSpec, Profile
from tests.support.fakes import MemoryActuator, Probes, one_pool_profile
from tests.support.gateway import until

pytestmark = pytest.mark.unit


def _replica(rid: str, key: str | None, healthy: bool, **observed: bool) -> Replica:
    labels = {} if key is None else {SPEC_LABEL: key}
    replica = Replica(handle=ReplicaHandle(rid, "decode", f"http://{rid}", labels=labels))
    replica.observe_health(healthy)
    for name, value in observed.items():
        setattr(replica, name, value)
    return replica


def test_observe_pool_counts_members_and_ready_replicas_per_generation() -> None:
    pool = Pool("decode", PoolSpec.model_validate({"role": "decode"}), "old", queue_limit=8)
    pool.retiring = True
    for replica in [
        _replica("a", "old", healthy=True),
        _replica("b", "old", healthy=True, draining=True),  # leaving: neither member nor ready
        _replica("c", "new", healthy=False),  # starting: a member, not ready
        _replica("d", "new", healthy=True, alive=False),  # dead
        _replica("e", None, healthy=True),  # a static endpoint: no label
    ]:
        pool.replicas[replica.id] = replica
    observed = observe_pool(pool)
    assert (observed.name, observed.spec_key, observed.retiring) == ("decode", "old", True)
    assert sorted(observed.generations, key=lambda g: str(g.key)) == [
        Generation(None, members=1, ready=1),
        Generation("new", members=1, ready=0),
        Generation("old", members=1, ready=1),
    ]


def _disaggregated(standard: Profile) -> Profile:
    data = standard.model_dump(mode="json")
    data["name"] = "d"
    data["routing"]["mode"] = "disaggregated"
    data["pools"]["prefill"] = {"role": "prefill"}
    return Profile.model_validate(data)


async def _started(actuator: MemoryActuator) -> tuple[PoolManager, Profile, Profile]:
    standard = one_pool_profile(role="decode")
    probes = Probes()
    probes.healthy = True
    manager = PoolManager(standard, actuator, probes)
    await manager.start()
    return manager, standard, _disaggregated(standard)


async def test_a_switch_waits_for_the_added_pool_and_drops_it_on_the_way_back() -> None:
    actuator = MemoryActuator()
    manager, standard, disaggregated = await _started(actuator)
    try:
        await manager.switch_profile(disaggregated)
        # the prefill pool exists but has no ready replica yet: the old profile still serves
        assert (manager.profile, manager.pending_profile) == (standard, disaggregated)
        await until(lambda: bool(actuator.handles.get("prefill")), 10)
        await manager.refresh()  # its replica answers /health: the new profile is active
        assert (manager.profile, manager.pending_profile) == (disaggregated, None)
        await manager.switch_profile(standard)  # the decode pool serves already: at once
        assert manager.profile == standard
        await until(lambda: "prefill" not in manager.pools, 10)
        assert actuator.calls[-1] == ("prefill", 0, ["prefill-2"])
    finally:
        await manager.close()


async def test_a_pool_switched_back_to_while_it_drains_is_kept() -> None:
    actuator = MemoryActuator()
    manager, standard, disaggregated = await _started(actuator)
    try:
        await manager.switch_profile(disaggregated)
        await until(lambda: bool(actuator.handles.get("prefill")), 10)
        await manager.refresh()
        pool = manager.pools["prefill"]
        (busy,) = pool.replicas.values()
        busy.inflight = 1  # a prefill in flight: the drop must wait for it
        await manager.switch_profile(standard)
        assert pool.retiring
        await until(lambda: busy.draining, 10)
        await manager.switch_profile(disaggregated)
        assert not pool.retiring and manager.pending_profile == disaggregated
        busy.inflight = 0  # the drain ends, then the re-adopted pool starts a replica
        await until(lambda: busy.id not in pool.replicas and bool(actuator.handles["prefill"]), 10)
        await manager.refresh()
        assert manager.profile == disaggregated
        assert manager.pools["prefill"] is pool
        assert [r.id for r in pool.replicas.values()] == [actuator.handles["prefill"][0].id]
    finally:
        await manager.close()


class _SomeDown(Probes):
    """Probes where the replicas at `down` URLs answer 503 (a worker cold-starting again)."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = True
        self.down: set[str] = set()

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        if any(url.startswith(base) for base in self.down):
            return 503, b""
        return await super().get(url, timeout_s)


async def test_a_routing_only_switch_applies_at_once_while_a_reused_pool_is_down() -> None:
    """The soak's bug: the prefill worker restarted (cold start 30 s), and a switch changing only
    `routing.prefill_threshold` stayed pending until it was ready (a second PUT got 409)."""
    probes = _SomeDown()
    disaggregated = _disaggregated(one_pool_profile(role="decode"))
    manager = PoolManager(disaggregated, MemoryActuator(), probes)
    await manager.start()
    try:
        await manager.refresh()
        (prefill,) = manager.pools["prefill"].replicas.values()
        probes.down.add(prefill.handle.url)
        await manager.refresh()
        assert replica_state(prefill) is not ReplicaState.ready
        data = disaggregated.model_dump(mode="json")
        data["name"], data["routing"]["prefill_threshold"] = "d2", 400
        variant = Profile.model_validate(data)
        await manager.switch_profile(variant)
        assert (manager.profile, manager.pending_profile) == (variant, None)
        assert manager.pools["prefill"].replicas == {prefill.id: prefill}  # carried over as is
        await manager.switch_profile(disaggregated)  # no 409: nothing was left pending
        assert manager.profile == disaggregated
    finally:
        await manager.close()
