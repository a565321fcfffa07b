"""Leader election through a coordination.k8s.io/v1 Lease with the real `kubernetes` client
against the fake API server (tests/support/kube_api.py: Lease GET/POST/PUT with the
resourceVersion conflict check), and the actuator's pod watch across a 410 Gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from pdserve.actuators.kubernetes import KubernetesActuator
from pdserve.actuators.kubernetes_lease import LeaseConfig, LeaseElector
from pdserve.profile import KubernetesActuatorSpec
from tests.support.kube_api import KubeApi, serve

pytestmark = pytest.mark.integration

NS = "serving"
LEASE = "pdserve-gateway"


@pytest.fixture
def cluster() -> Iterator[tuple[KubeApi, str]]:
    state = KubeApi(NS, deployments={"pdserve-decode": 1})
    state.add_pod("pdserve-decode-a", "decode")
    with serve(state) as url:
        yield state, url


def elector(host: str, identity: str, duration_s: int = 2, retry_s: float = 0.1) -> LeaseElector:
    api = client.ApiClient(client.Configuration(host=host))
    return LeaseElector(api, LeaseConfig(NS, LEASE, identity, duration_s, retry_s))


async def test_one_of_two_leads_and_the_lease_says_who(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    a, b = elector(host, "a"), elector(host, "b")
    async with a.running(), b.running():  # both race to create the lease: one wins
        await asyncio.sleep(0.6)  # several rounds of the other trying
        assert [a.leading, b.leading].count(True) == 1
        holder = "a" if a.leading else "b"
        spec = state.leases[LEASE]["spec"]
        assert spec["holderIdentity"] == holder
        assert spec["leaseDurationSeconds"] == 2
        assert spec["leaseTransitions"] == 0
        assert spec["acquireTime"] <= spec["renewTime"]
    puts = [c for c in state.calls if c.method == "PUT"]
    assert puts and all(c.body["metadata"]["resourceVersion"] for c in puts)


async def test_a_follower_takes_over_after_the_lease_lapses(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    a, b = elector(host, "a"), elector(host, "b")
    a._release = _no_release  # type: ignore[method-assign]  # a crash: no hand-back
    async with contextlib.AsyncExitStack() as leader:
        await leader.enter_async_context(a.running())
        await asyncio.wait_for(a.wait(True), 5)
        async with b.running():
            await asyncio.sleep(0.3)
            assert not b.leading
            await leader.aclose()  # a stops renewing
            stopped = time.monotonic()
            renewed_last = state.leases[LEASE]["spec"]["renewTime"]
            await asyncio.wait_for(b.wait(True), 5)
            waited = time.monotonic() - stopped
            assert state.lease_holder(LEASE) == "b"
    # b waits the whole duration from when it saw the last renewal (at most one retry before
    # a stopped), and takes over within one retry after it
    assert 2 - 0.1 <= waited <= 2 + 0.1 + 1.0, waited
    assert state.lease_holder(LEASE) is None  # b released it on its way out
    assert state.leases[LEASE]["spec"]["leaseTransitions"] == 1
    assert state.leases[LEASE]["spec"]["renewTime"] > renewed_last


async def _no_release() -> None:
    return None


async def test_release_on_shutdown_hands_over_at_once(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    a, b = elector(host, "a", duration_s=30), elector(host, "b", duration_s=30)
    async with contextlib.AsyncExitStack() as leader:
        await leader.enter_async_context(a.running())
        await asyncio.wait_for(a.wait(True), 5)
        async with b.running():
            await leader.aclose()
            assert state.lease_holder(LEASE) is None
            await asyncio.wait_for(b.wait(True), 5)  # far sooner than 30 s


async def test_a_stale_write_loses_to_the_resource_version(cluster: tuple[KubeApi, str]) -> None:
    """Two gateways read the same lapsed lease; only the first update is accepted."""
    state, host = cluster
    a, b = elector(host, "a"), elector(host, "b")
    assert await a.try_once()
    lease = client.CoordinationV1Api(client.ApiClient(client.Configuration(host=host)))
    stale = await asyncio.to_thread(lease.read_namespaced_lease, LEASE, NS)
    assert await a.try_once()  # a renews: a new resourceVersion
    stale.spec.holder_identity = "b"
    with pytest.raises(client.ApiException) as conflict:
        await asyncio.to_thread(lease.replace_namespaced_lease, LEASE, NS, stale)
    assert conflict.value.status == 409
    assert not await b.try_once()  # the lease is a's and fresh
    assert state.lease_holder(LEASE) == "a"


async def test_only_the_leader_patches_and_a_follower_never_resets_the_count(
    cluster: tuple[KubeApi, str],
) -> None:
    state, host = cluster

    def gateway(identity: str) -> KubernetesActuator:
        spec = KubernetesActuatorSpec(namespace=NS, lease_duration_s=2, lease_retry_s=0.1)
        api = client.ApiClient(client.Configuration(host=host))
        return KubernetesActuator(spec, api, identity=identity)

    leader, follower = gateway("leader"), gateway("follower")
    try:
        async with leader.leadership() as elected:
            assert elected is not None
            await asyncio.wait_for(elected.wait(True), 5)
            async with follower.leadership():
                await asyncio.sleep(0.3)
                await follower.scale("decode", 5, [])
                assert state.deployments["pdserve-decode"] == 1
                await leader.scale("decode", 3, [])
                assert state.deployments["pdserve-decode"] == 3
    finally:
        await leader.close()
        await follower.close()
    scales = [c for c in state.calls if c.path.endswith("/scale")]
    assert [c.body for c in scales] == [{"spec": {"replicas": 3}}]


async def test_the_watch_lists_again_after_410_gone(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    spec = KubernetesActuatorSpec(namespace=NS, leader_election=False)
    kube = KubernetesActuator(spec, client.ApiClient(client.Configuration(host=host)))
    kube._pods._watch_timeout = 1  # resume often, so the compacted version is asked for
    try:
        assert [h.id for h in await kube.replicas("decode")] == ["pdserve-decode-a"]
        state.compact()
        state.pods["pdserve-decode-a"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        state.add_pod("pdserve-decode-b", "decode")
        state.compact()  # the events above are gone too: only a new LIST can show them
        deadline = time.monotonic() + 10
        while [h.id for h in await kube.replicas("decode")] != ["pdserve-decode-b"]:
            assert time.monotonic() < deadline, "the cache never recovered"
            await asyncio.sleep(0.05)
        assert kube._pods.lists >= 2
    finally:
        await kube.close()
    watches = [c for c in state.calls if c.query.get("watch") == ["true"]]
    assert watches and all(c.query["resourceVersion"] for c in watches)
