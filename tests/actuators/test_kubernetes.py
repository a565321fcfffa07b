"""The Kubernetes actuator with the real `kubernetes` client against the fake API server of
tests/support/kube_api.py (no real Kubernetes API server runs here): the pods it lists and
watches, the victims it marks with the lowest deletion cost, the scale it patches. Leader
election is off here (one gateway); tests/actuators/test_kubernetes_lease.py has it on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from pdserve.actuators.kubernetes import DELETION_COST, KubernetesActuator
from pdserve.profile import KubernetesActuatorSpec
from tests.support.kube_api import KubeApi, serve

pytestmark = pytest.mark.integration

NS = "serving"


@pytest.fixture
def cluster() -> Iterator[tuple[KubeApi, str]]:
    state = KubeApi(NS, deployments={"pdserve-decode": 2, "pdserve-prefill": 1})
    state.add_pod("pdserve-decode-a", "decode")
    state.add_pod("pdserve-decode-b", "decode")
    state.add_pod("pdserve-prefill-a", "prefill")
    with serve(state) as url:
        yield state, url


def api_client(host: str) -> client.ApiClient:
    configuration = client.Configuration(
        host=host,
        api_key={"BearerToken": "sa-token"},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    return client.ApiClient(configuration)


def actuator(host: str, **spec: Any) -> KubernetesActuator:
    spec.setdefault("leader_election", False)
    return KubernetesActuator(
        KubernetesActuatorSpec(namespace=NS, port=8000, **spec), api_client(host)
    )


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """The watch delivers changes a moment after the API server made them."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the watch never delivered the change"
        await asyncio.sleep(0.05)


async def test_replicas_are_the_pool_pods_with_an_ip(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    state.add_pod("pdserve-decode-pending", "decode", ip=False, ready=False)
    state.add_pod("pdserve-decode-warming", "decode", ready=False)
    state.add_pod("pdserve-decode-old", "decode")
    state.pods["pdserve-decode-old"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    kube = actuator(host)
    try:
        handles = await kube.replicas("decode")
    finally:
        await kube.close()
    assert [h.id for h in handles] == [
        "pdserve-decode-a",
        "pdserve-decode-b",
        "pdserve-decode-warming",
    ]
    assert [h.url for h in handles] == [
        "http://10.1.0.10:8000",
        "http://10.1.0.11:8000",
        "http://10.1.0.13:8000",
    ]
    assert [h.labels["pdserve.io/ready"] for h in handles] == ["true", "true", "false"]
    assert all(h.pool == "decode" and h.alive for h in handles)
    assert all(h.started_at == 0.0 for h in handles)  # created before the actuator: unknown
    call = state.calls[0]  # one LIST of every pool's pods, then a WATCH from its version
    assert (call.method, call.path) == ("GET", f"/api/v1/namespaces/{NS}/pods")
    assert call.query["labelSelector"] == ["pdserve.io/pool"]
    assert "watch" not in call.query
    assert call.authorization == "Bearer sa-token"


async def test_scale_down_marks_victims_then_patches_the_scale(
    cluster: tuple[KubeApi, str],
) -> None:
    state, host = cluster
    kube = actuator(host)
    try:
        assert await kube.desired_replicas("decode") == 2
        await kube.scale("decode", 1, ["pdserve-decode-a"])

        async def one_left() -> bool:
            return [h.id for h in await kube.replicas("decode")] == ["pdserve-decode-b"]

        await eventually(one_left)  # the ReplicaSet removed the victim, not the other one
    finally:
        await kube.close()
    get_scale, mark, patch = [c for c in state.calls if "watch" not in c.query][:3]
    assert (get_scale.method, get_scale.path) == (
        "GET",
        f"/apis/apps/v1/namespaces/{NS}/deployments/pdserve-decode/scale",
    )
    assert (mark.method, mark.path) == ("PATCH", f"/api/v1/namespaces/{NS}/pods/pdserve-decode-a")
    assert mark.content_type == "application/merge-patch+json"
    assert mark.body == {"metadata": {"annotations": {DELETION_COST: "-2147483648"}}}
    assert (patch.method, patch.path) == (
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/pdserve-decode/scale",
    )
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 1}}
    assert state.deployments == {"pdserve-decode": 1, "pdserve-prefill": 1}


async def test_scale_up_and_to_zero(cluster: tuple[KubeApi, str]) -> None:
    state, host = cluster
    kube = actuator(host)
    try:
        await kube.scale("decode", 4, [])
        await eventually(lambda: _count(kube, "decode", 4))
        grown = await kube.replicas("decode")
        # the two pods created after the scale-up get their launch time on the actuator's clock
        assert sorted(h.started_at > 0 for h in grown) == [False, False, True, True]
        await kube.scale("prefill", 0, ["pdserve-prefill-a"])
        await eventually(lambda: _count(kube, "prefill", 0))
        assert await kube.desired_replicas("prefill") == 0
    finally:
        await kube.close()
    patches = [c.body for c in state.calls if c.method == "PATCH" and c.path.endswith("/scale")]
    assert patches == [{"spec": {"replicas": 4}}, {"spec": {"replicas": 0}}]


async def _count(kube: KubernetesActuator, pool: str, expected: int) -> bool:
    return len(await kube.replicas(pool)) == expected


async def test_manage_replicas_off_changes_nothing(cluster: tuple[KubeApi, str]) -> None:
    """KEDA owns the count and picks its own victims: the gateway patches nothing."""
    state, host = cluster
    kube = actuator(host, manage_replicas=False)
    try:
        await kube.scale("decode", 1, ["pdserve-decode-b"])
    finally:
        await kube.close()
    assert state.calls == []
    assert state.deployments["pdserve-decode"] == 2


async def test_prefix_and_errors_surface(cluster: tuple[KubeApi, str]) -> None:
    _, host = cluster
    kube = actuator(host, deployment_prefix="other")
    try:
        with pytest.raises(client.ApiException) as failure:
            await kube.scale("decode", 2, [])
    finally:
        await kube.close()
    assert failure.value.status == 404
