"""A fake Kubernetes API server on 127.0.0.1 for the Kubernetes actuator's tests.

No real Kubernetes API server runs in this suite. `KubeApi` holds the objects (Deployment
replica counts, pods) and `serve(api)` answers, over HTTP, the documented endpoints the actuator
uses through the real `kubernetes` client: apps/v1 `deployments/{name}/scale` (GET, and PATCH
with `application/merge-patch+json`), core/v1 pod list with an equality `labelSelector`, and
core/v1 pod PATCH (merge patch). Like a ReplicaSet, it deletes the pods with the lowest
`controller.kubernetes.io/pod-deletion-cost` first when a Deployment shrinks, and creates new
ones when it grows. With `rules` (a Role's), it authorizes each request the way the API
server's RBAC does (verb, API group, resource with its subresource, and `resourceNames`, which
only match requests naming an object): anything else is a 403.

Watch and Lease, following their documented contracts:
- every change of a pod bumps one resourceVersion counter (the object's
  `metadata.resourceVersion`; a list's `metadata.resourceVersion` is the counter);
  `GET pods?watch=true&resourceVersion=N` streams, one JSON object a line, every ADDED /
  MODIFIED / DELETED event after N that matches the label selector, then waits for more until
  `timeoutSeconds`; a version older than `compacted` (`compact()`) gets an ERROR event with a
  410 Status (Expired), as the API server answers a compacted version;
- coordination.k8s.io/v1 leases: GET (404 when absent), POST (409 AlreadyExists), PUT (409
  Conflict unless `metadata.resourceVersion` is the stored one; a new version on success).
Not modelled: field selectors, set-based selectors (`in`, `notin`, `!=`), bookmarks, watch of
anything but pods, watch cache windows, server-side apply, admission, lease validation beyond
the conflict check, and a Deployment's own status (pods are ready as created).
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pdserve.actuators.kubernetes import DELETION_COST

Access = tuple[str, str, str]  # (verb, API group, resource[/subresource])
POOL_LABEL = "pdserve.io/pool"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    authorization: str | None
    body: Any
    access: Access
    name: str | None = None  # the object the request names (get/patch/update)
    at: float = field(default_factory=time.monotonic)  # when the server received it
    status: int | None = None  # the code it answered


@dataclass
class KubeApi:
    """The API server's objects and what it was asked. `rules` None: everything is allowed."""

    namespace: str
    deployment_prefix: str = "pdserve"
    deployments: dict[str, int] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    rules: list[dict[str, Any]] | None = None
    denied: list[Access] = field(default_factory=list)
    pod_ip: str | None = None  # every pod's IP; None: 10.1.0.10, .11, ... in creation order
    next_ip: int = 10
    pod_ips: list[str] = field(default_factory=list)  # IPs given to new pods first, in order
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # on every pod, e.g. the instance
    version: int = 100
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    compacted: int = 0  # watches from a resourceVersion older than this get 410 Gone
    changed: threading.Condition = field(default_factory=threading.Condition)
    closing: bool = False

    @property
    def seen(self) -> list[Access]:
        return [call.access for call in self.calls]

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
            if self.pod_ips:
                status["podIP"] = self.pod_ips.pop(0)
            else:
                status["podIP"] = self.pod_ip or f"10.1.0.{self.next_ip}"
                self.next_ip += 1
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.pods[name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {POOL_LABEL: pool, "app.kubernetes.io/name": "pdserve", **self.labels},
                "annotations": {},
                "creationTimestamp": created,
            },
            "spec": {"containers": [{"name": "worker", "image": "pdserve:test"}]},
            "status": status,
        }
        self.record("ADDED", self.pods[name])

    def add_gateway_pod(self, name: str, ip: str) -> None:
        """A gateway pod of the release (no pool label), as the chart's gateway Deployment
        makes them: the leader finds its peers among these."""
        labels = {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "pdserve"}
        self.pods[name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {**labels, **self.labels},
                "annotations": {},
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"containers": [{"name": "gateway", "image": "pdserve:test"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }  # fmt: skip
        self.record("ADDED", self.pods[name])

    def record(self, kind: str, pod: dict[str, Any]) -> None:
        """A pod changed: a new resourceVersion, and an event for the watches."""
        with self.changed:
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, kind, copy.deepcopy(pod)))
            self.changed.notify_all()

    def modified(self, name: str) -> None:
        """Record a change a test made to `pods[name]` in place."""
        self.record("MODIFIED", self.pods[name])

    def delete_pod(self, name: str) -> None:
        """The pod is gone (its deletion finished)."""
        self.record("DELETED", self.pods.pop(name))

    def compact(self) -> None:
        """Forget the history: a watch from any version seen so far gets 410 Gone."""
        with self.changed:
            self.compacted = self.version + 1
            self.events.clear()

    def lease_holder(self, name: str) -> str | None:
        lease = self.leases.get(name)
        return lease["spec"].get("holderIdentity") if lease else None

    def reconcile(self, deployment: str) -> None:
        """What the ReplicaSet controller does after the scale changes."""
        pool = deployment.removeprefix(f"{self.deployment_prefix}-")
        live = [p for p in self.pods.values() if _pool(p) == pool and not _deleting(p)]
        want = self.deployments[deployment]
        for pod in sorted(live, key=_cost)[: max(0, len(live) - want)]:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
            self.record("MODIFIED", pod)
        for index in range(max(0, want - len(live))):
            self.add_pod(f"{deployment}-new{len(self.pods)}-{index}", pool, created=_now())

    def allowed(self, access: Access, name: str | None = None) -> bool:
        """RBAC: a rule with resourceNames matches only a request naming one of them."""
        if self.rules is None:
            return True
        verb, group, resource = access
        return any(
            verb in rule["verbs"]
            and group in rule["apiGroups"]
            and resource in rule["resources"]
            and ("resourceNames" not in rule or name in rule["resourceNames"])
            for rule in self.rules
        )


def request_name(path: str) -> str | None:
    """The named object of a request: `.../<resource>/<name>[/<subresource>]`."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    return rest[3] if len(rest) > 3 else None


def request_access(method: str, path: str, query: dict[str, list[str]]) -> Access:
    """RBAC's view of an HTTP request (Kubernetes' documented request attributes)."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    resource = "/".join([*rest[2:3], *rest[4:5]])  # resource, plus a subresource if any
    named_object = len(rest) > 3
    verbs = {"PATCH": "patch", "PUT": "update", "DELETE": "delete", "POST": "create"}
    if method == "GET":
        watching = query.get("watch", ["false"])[0] == "true"
        verb = "get" if named_object else ("watch" if watching else "list")
    else:
        verb = verbs[method]
    return verb, group, resource


@contextlib.contextmanager
def serve(api: KubeApi) -> Iterator[str]:
    """The API server for the block; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        with api.changed:
            api.closing = True  # open watches end
            api.changed.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _handler(api: KubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams as the API server's

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            call = self._call("GET")
            if call.query.get("watch", ["false"])[0] == "true":
                if not api.allowed(call.access):
                    api.denied.append(call.access)
                    self._answer(*_status(403, f"forbidden: {call.access}"))
                else:
                    self._watch(call.query)
                return
            self._answer(*_respond(api, call))

        def _watch(self, query: dict[str, list[str]]) -> None:
            """Events after the asked resourceVersion, one JSON object a line, until timeout."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._stream_events(query)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the client went away
                self.close_connection = True

        def _stream_events(self, query: dict[str, list[str]]) -> None:
            selector = _selector(query)
            since = int(query.get("resourceVersion", ["0"])[0] or 0)
            deadline = time.monotonic() + float(query.get("timeoutSeconds", ["300"])[0])
            if since < api.compacted:
                gone = _status(410, f"too old resource version: {since}")
                self._event({"type": "ERROR", "object": {**gone, "reason": "Expired"}})
                return
            while True:
                with api.changed:
                    fresh = [e for e in api.events if e[0] > since]
                    if not fresh:
                        left = deadline - time.monotonic()
                        if left <= 0 or api.closing:
                            return
                        api.changed.wait(min(left, 0.2))
                        continue
                for version, kind, pod in fresh:
                    since = version
                    if _matches(pod, selector) and not self._event({"type": kind, "object": pod}):
                        return

        def _event(self, event: dict[str, Any]) -> bool:
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
            return True

        def do_PATCH(self) -> None:  # noqa: N802
            self._answer(*_respond(api, self._call("PATCH")))

        def do_POST(self) -> None:  # noqa: N802
            self._answer(*_respond(api, self._call("POST")))

        def do_PUT(self) -> None:  # noqa: N802
            self._answer(*_respond(api, self._call("PUT")))

        def _call(self, method: str) -> Call:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            query = parse_qs(url.query)
            call = Call(
                method,
                url.path,
                query,
                self.headers.get("Content-Type"),
                self.headers.get("Authorization"),
                json.loads(raw) if raw else None,
                request_access(method, url.path, query),
                request_name(url.path),
            )
            api.calls.append(call)
            return call

        def _answer(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _respond(api: KubeApi, call: Call) -> tuple[int, Any]:
    code, payload = _route(api, call)
    call.status = code
    return code, payload


def _route(api: KubeApi, call: Call) -> tuple[int, Any]:
    if not api.allowed(call.access, call.name):
        api.denied.append(call.access)
        return _status(403, f"forbidden: {call.access}")
    if call.method == "PATCH" and call.content_type != "application/merge-patch+json":
        return _status(415, f"unsupported patch type {call.content_type}")
    parts = call.path.strip("/").split("/")
    namespaced = ["namespaces", api.namespace]
    scale = [*parts[:6], *parts[7:]] == ["apis", "apps", "v1", *namespaced, "deployments", "scale"]
    if scale and len(parts) == 8:
        return _scale(api, call.method, parts[6], call.body)
    if parts[:2] == ["api", "v1"] and parts[2:4] == namespaced and parts[4:5] == ["pods"]:
        if len(parts) == 5 and call.method == "GET":
            return _pod_list(api, call.query)
        if len(parts) == 6 and call.method == "PATCH" and parts[5] in api.pods:
            _merge(api.pods[parts[5]], call.body)
            api.modified(parts[5])
            return 200, api.pods[parts[5]]
    if parts[:3] == ["apis", "coordination.k8s.io", "v1"] and parts[3:6] == [*namespaced, "leases"]:
        return _lease(api, call.method, parts[6] if len(parts) == 7 else None, call.body)
    return _status(404, f"{call.method} {call.path} not found")


def _lease(api: KubeApi, method: str, name: str | None, body: Any) -> tuple[int, Any]:
    """GET / POST (create) / PUT (update, optimistic on metadata.resourceVersion)."""
    with api.changed:
        if method == "POST" and name is None:
            name = body["metadata"]["name"]
            if name in api.leases:
                return _status(409, f'leases.coordination.k8s.io "{name}" already exists')
            return 201, _store_lease(api, name, body)
        if name is None or name not in api.leases:
            return _status(404, f'leases.coordination.k8s.io "{name}" not found')
        current = api.leases[name]
        if method == "GET":
            return 200, current
        if method == "PUT":
            sent = body.get("metadata", {}).get("resourceVersion")
            if sent != current["metadata"]["resourceVersion"]:
                conflict = "the object has been modified; apply your changes to the latest version"
                return _status(409, f"Operation cannot be fulfilled on leases: {conflict}")
            return 200, _store_lease(api, name, body)
    return _status(405, f"{method} not allowed")


def _store_lease(api: KubeApi, name: str, body: dict[str, Any]) -> dict[str, Any]:
    api.version += 1
    lease = copy.deepcopy(body)
    lease.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
    lease["metadata"] = {
        **lease.get("metadata", {}),
        "name": name,
        "namespace": api.namespace,
        "resourceVersion": str(api.version),
    }
    lease.setdefault("spec", {})
    api.leases[name] = lease
    return lease


def _scale(api: KubeApi, method: str, name: str, body: Any) -> tuple[int, Any]:
    if name not in api.deployments:
        return _status(404, f'deployments.apps "{name}" not found')
    if method == "PATCH":
        api.deployments[name] = int(body["spec"]["replicas"])
        api.reconcile(name)
    replicas = api.deployments[name]
    return 200, {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": name, "namespace": api.namespace},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "selector": POOL_LABEL},
    }


def _selector(query: dict[str, list[str]]) -> dict[str, str | None]:
    """Equality (`k=v`, `k==v`) and existence (`k`) terms; None: the label must exist."""
    terms = [term for term in query.get("labelSelector", [""])[0].split(",") if term]
    selector: dict[str, str | None] = {}
    for term in terms:
        key, equals, value = term.partition("=")
        selector[key] = value.removeprefix("=") if equals else None
    return selector


def _matches(pod: dict[str, Any], selector: dict[str, str | None]) -> bool:
    labels = pod["metadata"]["labels"]
    return all((k in labels) if v is None else labels.get(k) == v for k, v in selector.items())


def _pod_list(api: KubeApi, query: dict[str, list[str]]) -> tuple[int, Any]:
    selector = _selector(query)
    with api.changed:
        items = [copy.deepcopy(p) for p in api.pods.values() if _matches(p, selector)]
        meta = {"resourceVersion": str(api.version)}
    return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}


def _status(code: int, message: str) -> tuple[int, Any]:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return code, {**status, "code": code}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pool(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get(POOL_LABEL))


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
