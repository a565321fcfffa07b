"""The Kubernetes actuator with the real `kubernetes` client against a local HTTP server.

No real Kubernetes API server runs here. The server below implements, on 127.0.0.1, the
documented endpoints the actuator uses: apps/v1 `deployments/{name}/scale` (GET, and PATCH with
`application/merge-patch+json`), core/v1 pod list with an equality `labelSelector`, and core/v1
pod PATCH (merge patch). Like a ReplicaSet, it deletes the pods with the lowest
`controller.kubernetes.io/pod-deletion-cost` first when a Deployment shrinks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from pdserve.actuators.kubernetes import DELETION_COST, KubernetesActuator
from pdserve.profile import KubernetesActuatorSpec

pytestmark = pytest.mark.integration

NS = "serving"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    authorization: str | None
    body: Any


@dataclass
class Cluster:
    """The API server's objects: Deployment replica counts and pods."""

    deployments: dict[str, int] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    next_ip: int = 10

    def add_pod(
        self,
        name: str,
        pool: str,
        *,
        ip: bool = True,
        ready: bool = True,
        created: str = "2026-01-01T00:00:00Z",
    ) -> None:
        status: dict[str, Any] = {"phase": "Running" if ip else "Pending"}
        if ip:
            status["podIP"] = f"10.1.0.{self.next_ip}"
            self.next_ip += 1
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.pods[name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"pdserve.io/pool": pool, "app.kubernetes.io/name": "pdserve"},
                "annotations": {},
                "creationTimestamp": created,
            },
            "spec": {"containers": [{"name": "worker", "image": "pdserve:test"}]},
            "status": status,
        }

    def reconcile(self, deployment: str, pool: str) -> None:
        """What the ReplicaSet controller does after the scale changes."""
        live = [p for p in self.pods.values() if _pool(p) == pool and not _deleting(p)]
        want = self.deployments[deployment]
        for pod in sorted(live, key=_cost)[: max(0, len(live) - want)]:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
        for index in range(max(0, want - len(live))):
            self.add_pod(f"{deployment}-new{len(self.pods)}-{index}", pool, created=_now())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pool(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get("pdserve.io/pool"))


def _deleting(pod: dict[str, Any]) -> bool:
    return "deletionTimestamp" in pod["metadata"]


def _cost(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"].get(DELETION_COST, "0"))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def make_handler(cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            call = Call(
                method,
                url.path,
                parse_qs(url.query),
                self.headers.get("Content-Type"),
                self.headers.get("Authorization"),
                json.loads(raw) if raw else None,
            )
            cluster.calls.append(call)
            parts = url.path.strip("/").split("/")
            if method == "PATCH" and call.content_type != "application/merge-patch+json":
                return self._status(415, f"unsupported patch type {call.content_type}")
            if (
                parts[:5] == ["apis", "apps", "v1", "namespaces", NS]
                and parts[5:6] == ["deployments"]
                and parts[7:] == ["scale"]
            ):
                return self._scale(method, parts[6], call.body)
            if parts[:4] == ["api", "v1", "namespaces", NS] and parts[4:5] == ["pods"]:
                if len(parts) == 5 and method == "GET":
                    return self._pod_list(call.query)
                if len(parts) == 6 and method == "PATCH" and parts[5] in cluster.pods:
                    _merge(cluster.pods[parts[5]], call.body)
                    return self._json(200, cluster.pods[parts[5]])
            self._status(404, f"{method} {url.path} not found")

        def _scale(self, method: str, name: str, body: Any) -> None:
            if name not in cluster.deployments:
                return self._status(404, f'deployments.apps "{name}" not found')
            if method == "PATCH":
                cluster.deployments[name] = int(body["spec"]["replicas"])
                cluster.reconcile(name, name.removeprefix("pdserve-"))
            replicas = cluster.deployments[name]
            self._json(
                200,
                {
                    "kind": "Scale",
                    "apiVersion": "autoscaling/v1",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"replicas": replicas},
                    "status": {"replicas": replicas, "selector": "pdserve.io/pool"},
                },
            )

        def _pod_list(self, query: dict[str, list[str]]) -> None:
            selector = dict(
                term.split("=", 1) for term in query.get("labelSelector", [""])[0].split(",")
            )
            items = [
                pod
                for pod in cluster.pods.values()
                if all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())
            ]
            self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

        def _status(self, code: int, message: str) -> None:
            self._json(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": message,
                    "code": code,
                },
            )

        def _json(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, str]]:
    state = Cluster(deployments={"pdserve-decode": 2, "pdserve-prefill": 1})
    state.add_pod("pdserve-decode-a", "decode")
    state.add_pod("pdserve-decode-b", "decode")
    state.add_pod("pdserve-prefill-a", "prefill")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def api_client(host: str) -> client.ApiClient:
    configuration = client.Configuration(
        host=host,
        api_key={"BearerToken": "sa-token"},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    return client.ApiClient(configuration)


def actuator(host: str, **spec: Any) -> KubernetesActuator:
    return KubernetesActuator(
        KubernetesActuatorSpec(namespace=NS, port=8000, **spec), api_client(host)
    )


async def test_replicas_are_the_pool_pods_with_an_ip(cluster: tuple[Cluster, str]) -> None:
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
    (call,) = state.calls
    assert (call.method, call.path) == ("GET", f"/api/v1/namespaces/{NS}/pods")
    assert call.query["labelSelector"] == ["pdserve.io/pool=decode"]
    assert call.authorization == "Bearer sa-token"


async def test_scale_down_marks_victims_then_patches_the_scale(
    cluster: tuple[Cluster, str],
) -> None:
    state, host = cluster
    kube = actuator(host)
    try:
        assert await kube.desired_replicas("decode") == 2
        await kube.scale("decode", 1, ["pdserve-decode-a"])
        after = await kube.replicas("decode")
    finally:
        await kube.close()
    get_scale, mark, patch, _ = state.calls
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
    # the ReplicaSet removed the victim the gateway chose, not the other one
    assert [h.id for h in after] == ["pdserve-decode-b"]
    assert state.deployments == {"pdserve-decode": 1, "pdserve-prefill": 1}


async def test_scale_up_and_to_zero(cluster: tuple[Cluster, str]) -> None:
    state, host = cluster
    kube = actuator(host)
    try:
        await kube.scale("decode", 4, [])
        grown = await kube.replicas("decode")
        assert len(grown) == 4
        # the two pods created after the scale-up get their launch time on the actuator's clock
        assert sorted(h.started_at > 0 for h in grown) == [False, False, True, True]
        await kube.scale("prefill", 0, ["pdserve-prefill-a"])
        assert await kube.replicas("prefill") == []
        assert await kube.desired_replicas("prefill") == 0
    finally:
        await kube.close()
    patches = [c.body for c in state.calls if c.method == "PATCH" and c.path.endswith("/scale")]
    assert patches == [{"spec": {"replicas": 4}}, {"spec": {"replicas": 0}}]


async def test_manage_replicas_off_only_marks_victims(cluster: tuple[Cluster, str]) -> None:
    state, host = cluster
    kube = actuator(host, manage_replicas=False)
    try:
        await kube.scale("decode", 1, ["pdserve-decode-b"])
    finally:
        await kube.close()
    assert [(c.method, c.path.rsplit("/", 1)[-1]) for c in state.calls] == [
        ("PATCH", "pdserve-decode-b")
    ]
    assert state.deployments["pdserve-decode"] == 2


async def test_prefix_and_errors_surface(cluster: tuple[Cluster, str]) -> None:
    _, host = cluster
    kube = actuator(host, deployment_prefix="other")
    try:
        with pytest.raises(client.ApiException) as failure:
            await kube.scale("decode", 2, [])
    finally:
        await kube.close()
    assert failure.value.status == 404
