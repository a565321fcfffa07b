"""The gateway's rendered Role is exactly what the real kubernetes actuator needs.

No Kubernetes API server runs here. The server below authorizes every request the way the API
server's RBAC does (the request's verb, API group and resource, subresource included, against
the rendered Role's rules: anything else is 403) and answers the documented core/v1 pod list and
patch and apps/v1 `deployments/{name}/scale` endpoints with minimal objects. The actuator runs
with the real `kubernetes` client, so each call it makes is checked against the chart.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client

from pdserve import profile as profiles
from pdserve.actuators.kubernetes import KubernetesActuator

from .conftest import NAMESPACE, RELEASE, Objects, Template, named, of_kind

pytestmark = pytest.mark.integration

PREFIX = f"{RELEASE}-pdserve"
Access = tuple[str, str, str]  # (verb, API group, resource[/subresource])


def request_access(method: str, path: str, query: dict[str, list[str]]) -> Access:
    """RBAC's view of an HTTP request (Kubernetes' documented request attributes)."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[:2] == ["namespaces", NAMESPACE], path
    resource = "/".join([rest[2], *rest[4:5]])  # resource, plus a subresource if any
    named_object = len(rest) > 3
    verbs = {"PATCH": "patch", "PUT": "update", "DELETE": "delete", "POST": "create"}
    if method == "GET":
        watching = query.get("watch", ["false"])[0] == "true"
        verb = "get" if named_object else ("watch" if watching else "list")
    else:
        verb = verbs[method]
    return verb, group, resource


def allowed(rules: list[dict[str, Any]], access: Access) -> bool:
    verb, group, resource = access
    return any(
        verb in rule["verbs"] and group in rule["apiGroups"] and resource in rule["resources"]
        for rule in rules
    )


@dataclass
class ApiServer:
    rules: list[dict[str, Any]]
    pod_ip: str = "10.0.0.7"
    seen: list[Access] = field(default_factory=list)
    denied: list[Access] = field(default_factory=list)


def _pod(name: str, pool: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"pdserve.io/pool": pool}},
        "spec": {"containers": [{"name": "worker", "image": "vllm"}]},
        "status": {"phase": "Running", "podIP": ip},
    }


def make_handler(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            self._serve("GET")

        def do_PATCH(self) -> None:  # noqa: N802
            self._serve("PATCH")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            access = request_access(method, url.path, parse_qs(url.query))
            server.seen.append(access)
            if not allowed(server.rules, access):
                server.denied.append(access)
                return self._json(403, {"kind": "Status", "status": "Failure", "code": 403})
            if access[2] == "pods":
                return self._pods(access[0], url.path, parse_qs(url.query))
            assert access[2] == "deployments/scale", access  # the only other thing granted
            deployment = url.path.strip("/").split("/")[-2]
            scale = {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {"name": deployment, "namespace": NAMESPACE},
                "spec": {"replicas": 2},
                "status": {"replicas": 2},
            }
            self._json(200, scale)

        def _pods(self, verb: str, path: str, query: dict[str, list[str]]) -> None:
            """One running pod per pool: `<prefix>-<pool>-0`, labelled with its pool."""
            if verb == "patch":
                name = path.rsplit("/", 1)[-1]
                return self._json(200, _pod(name, name.split("-")[-2], server.pod_ip))
            selector = query.get("labelSelector", [""])[0]
            pool = selector.removeprefix("pdserve.io/pool=")
            items = [_pod(f"{PREFIX}-{pool}-0", pool, server.pod_ip)]
            self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

        def _json(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(rules: list[dict[str, Any]]) -> tuple[ApiServer, str]:
        state = ApiServer(rules)
        http = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
        threading.Thread(target=http.serve_forever, daemon=True).start()
        servers.append(http)
        return state, f"http://127.0.0.1:{http.server_address[1]}"

    yield start
    for http in servers:
        http.shutdown()
        http.server_close()


def _actuator_and_rules(
    objects: Objects, host: str
) -> tuple[KubernetesActuator, list[dict[str, Any]]]:
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    [role] = of_kind(objects, "Role")
    api = client.ApiClient(client.Configuration(host=host))
    return KubernetesActuator(loaded.actuator.kubernetes, api), role["rules"]


async def _exercise(kube: KubernetesActuator) -> None:
    """Everything the gateway asks of the actuator: discover, scale up, drain and shrink."""
    [replica] = await kube.replicas("decode")
    await kube.scale("decode", 3, [])
    await kube.scale("decode", 1, [replica.id])
    assert await kube.desired_replicas("decode") == 2


async def test_the_actuator_needs_every_rule_and_nothing_more(
    rendered: dict[str, Objects], serve: Any
) -> None:
    state, host = serve([])
    kube, rules = _actuator_and_rules(rendered["a100-l4"], host)
    state.rules = rules
    try:
        await _exercise(kube)
    finally:
        await kube.close()
    assert state.denied == []
    used = set(state.seen)
    granted = {
        (verb, group, resource)
        for rule in rules
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert used == granted  # each granted permission is exercised


async def test_under_keda_the_actuator_never_asks_to_scale(
    template: Template, values_dir: Path, serve: Any
) -> None:
    objects = template(values_dir / "a100-l4.yaml", sets=("autoscaling.mode=keda",))
    state, host = serve([])
    kube, rules = _actuator_and_rules(objects, host)
    state.rules = rules
    try:
        [replica] = await kube.replicas("decode")
        await kube.scale("decode", 1, [replica.id])
    finally:
        await kube.close()
    assert state.denied == []
    assert {resource for _, _, resource in state.seen} == {"pods"}


async def test_a_missing_rule_is_denied(rendered: dict[str, Objects], serve: Any) -> None:
    state, host = serve([])
    kube, rules = _actuator_and_rules(rendered["a100-l4"], host)
    state.rules = [rule for rule in rules if rule["resources"] != ["deployments/scale"]]
    try:
        with pytest.raises(client.ApiException) as denied:
            await kube.scale("decode", 3, [])
    finally:
        await kube.close()
    assert denied.value.status == 403
    assert state.denied == [("patch", "apps", "deployments/scale")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig naming the fake API server (as the gateway's in-cluster account would)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
        "users": [{"name": "gateway", "user": {"token": "service-account-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gateway"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.parametrize("mode", ["pdserve", "keda"])
def test_the_real_gateway_runs_with_the_charts_profile_within_its_role(
    template: Template, values_dir: Path, serve: Any, tmp_path: Path, mode: str
) -> None:
    worker_port = _free_port()  # nothing listens: the pods never turn ready
    objects = template(
        values_dir / "a100-l4.yaml", sets=(f"autoscaling.mode={mode}", f"vllm.port={worker_port}")
    )
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    profile_file = tmp_path / "profile.yaml"
    profile_file.write_text(config["data"]["profile.yaml"])
    [role] = of_kind(objects, "Role")
    state, api_url = serve(role["rules"])
    state.pod_ip = "127.0.0.1"
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "KUBECONFIG": str(_kubeconfig(tmp_path / "kube", api_url)),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    port = _free_port()
    command = [sys.executable, "-m", "pdserve.cli", "gateway", "--profile", str(profile_file)]
    gateway = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _get(f"{base}/health") == 200, 90, "the gateway's /health")
        _wait_for(lambda: ("list", "", "pods") in state.seen, 30, "pod discovery")
        assert _get(f"{base}/ready") == 503  # the decode pod never answers its probe
    finally:
        gateway.terminate()
        try:
            _, stderr = gateway.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            _, stderr = gateway.communicate(timeout=10)
    assert state.denied == [], stderr[-3000:]
    scaled = ("patch", "apps", "deployments/scale") in state.seen  # initial replicas applied
    assert scaled is (mode == "pdserve")
