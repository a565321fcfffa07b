"""The gateway's rendered Role is exactly what the real kubernetes actuator needs.

No Kubernetes API server runs here. The fake of tests/support/kube_api.py, given the rendered
Role's rules, authorizes every request the way the API server's RBAC does (the request's verb,
API group and resource, subresource included: anything else is 403) and answers the documented
core/v1 pod list, watch and patch, coordination.k8s.io/v1 leases and apps/v1
`deployments/{name}/scale` endpoints. The actuator runs
with the real `kubernetes` client, so each call it makes is checked against the chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from pdserve import profile as profiles
from pdserve.actuators.kubernetes import KubernetesActuator
from pdserve.helm.render import render_values
from pdserve.helm.values import Vllm
from pdserve.processes import free_port
from tests.support.kube_api import KubeApi
from tests.support.kube_api import serve as serve_api

from .conftest import NAMESPACE, RELEASE, Objects, Template, named, of_kind

pytestmark = pytest.mark.integration

PREFIX = f"{RELEASE}-pdserve"
POOLS = ("prefill", "decode")  # the a100-l4 profile's


@pytest.fixture
def serve() -> Iterator[Any]:
    """`serve(rules, pod_ip=...)`: a fake API server with one pod per pool, running for the test."""
    with contextlib.ExitStack() as servers:

        def start(rules: list[dict[str, Any]], pod_ip: str | None = None) -> tuple[KubeApi, str]:
            state = KubeApi(NAMESPACE, deployment_prefix=PREFIX, rules=rules, pod_ip=pod_ip)
            state.labels = {"app.kubernetes.io/instance": RELEASE}  # the chart's pods carry it
            for pool in POOLS:
                state.deployments[f"{PREFIX}-{pool}"] = 1
                state.add_pod(f"{PREFIX}-{pool}-0", pool)
            return state, servers.enter_context(serve_api(state))

        yield start


def _actuator_and_rules(
    objects: Objects, host: str
) -> tuple[KubernetesActuator, list[dict[str, Any]]]:
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    [role] = of_kind(objects, "Role")
    api = client.ApiClient(client.Configuration(host=host))
    return KubernetesActuator(loaded.actuator.kubernetes, api), role["rules"]


async def _exercise(kube: KubernetesActuator) -> None:
    """Everything the gateway asks of the actuator: discover (list, watch), win the Lease
    (create) and renew it (get, update), scale up, drain and shrink."""
    [replica] = await kube.replicas("decode")
    async with kube.leadership() as elected:
        assert elected is not None
        await asyncio.wait_for(elected.wait(True), 10)
        assert await elected.try_once()  # a renewal
        await kube.scale("decode", 3, [])
        await kube.scale("decode", 1, [replica.id])
        assert await kube.desired_replicas("decode") == 1  # the scale it patched last


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
        async with kube.leadership() as elected:
            assert elected is not None
            await asyncio.wait_for(elected.wait(True), 10)
            await kube.scale("decode", 1, [replica.id])  # KEDA owns the count: nothing
    finally:
        await kube.close()
    assert state.denied == []
    assert {resource for _, _, resource in state.seen} == {"pods", "leases"}
    assert {verb for verb, _, resource in state.seen if resource == "pods"} == {"list", "watch"}


async def test_a_missing_rule_is_denied(rendered: dict[str, Objects], serve: Any) -> None:
    state, host = serve([])
    kube, rules = _actuator_and_rules(rendered["a100-l4"], host)
    state.rules = [rule for rule in rules if rule["resources"] != ["deployments/scale"]]
    try:
        async with kube.leadership() as elected:
            assert elected is not None
            await asyncio.wait_for(elected.wait(True), 10)
            with pytest.raises(client.ApiException) as denied:
                await kube.scale("decode", 3, [])
    finally:
        await kube.close()
    assert denied.value.status == 403
    assert state.denied == [("patch", "apps", "deployments/scale")]


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
    template: Template, serve: Any, tmp_path: Path, mode: str
) -> None:
    worker_port = free_port()  # nothing listens: the pods never turn ready
    values = tmp_path / "values.yaml"
    rendered = render_values(profiles.load("a100-l4"), Vllm(port=worker_port))
    values.write_text(yaml.safe_dump(rendered))
    objects = template(values, sets=(f"autoscaling.mode={mode}",))
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    profile_file = tmp_path / "profile.yaml"
    profile_file.write_text(config["data"]["profile.yaml"])
    [role] = of_kind(objects, "Role")
    state, api_url = serve(role["rules"], pod_ip="127.0.0.1")
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "KUBECONFIG": str(_kubeconfig(tmp_path / "kube", api_url)),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    port = free_port()
    command = [sys.executable, "-m", "pdserve.cli", "gateway", "--profile", str(profile_file)]
    gateway = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _get(f"{base}/health") == 200, 90, "the gateway's /health")
        _wait_for(lambda: ("watch", "", "pods") in state.seen, 30, "pod discovery")
        _wait_for(lambda: state.lease_holder(f"{PREFIX}-gateway"), 30, "the lease")
        assert _get(f"{base}/ready") == 503  # the decode pod never answers its probe
    finally:
        gateway.terminate()
        try:
            _, stderr = gateway.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            _, stderr = gateway.communicate(timeout=10)
    assert state.denied == [], stderr[-3000:]
    if mode == "keda":
        assert ("patch", "apps", "deployments/scale") not in state.seen
