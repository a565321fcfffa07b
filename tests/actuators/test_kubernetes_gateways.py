"""Two gateway processes against one fake Kubernetes API (tests/support/kube_api.py, which serves
the Lease, pod watch and scale endpoints by their documented contracts; what it does not model
is listed there). Each gateway has its own service-account token, so every API call says which
gateway made it. The pods are simulated workers on 127.0.0.2 and 127.0.0.3 (one port, as pods
share a container port).

- only the lease holder patches anything (victims and scale);
- SIGKILL the leader (no hand-back): the other takes the lease once it lapses, never before,
  within the lease duration plus its retry period;
- requests through the survivor flow throughout, and it scales from then on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pdserve import profile as profiles
from pdserve.processes import free_port
from pdserve.workers.sim.launch import sim_argv, wait_healthy
from tests.support.kube_api import KubeApi, serve

pytestmark = pytest.mark.integration

NS = "serving"
LEASE = "pdserve-gateway"
DURATION_S = 3
RETRY_S = 0.3
POD_HOSTS = ("127.0.0.2", "127.0.0.3")
BODY = {"model": "tiny", "prompt": "hello there", "max_tokens": 2}
ADMIN_TOKEN = "admin-secret"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
GATEWAY_HOSTS = ("127.0.0.4", "127.0.0.5")  # the gateway pods' IPs: one port, as in a pod


def _profile(worker_port: int) -> dict[str, Any]:
    data = profiles.load("sim").model_dump(mode="json")
    data["engine"]["sim_time_scale"] = 50
    data["routing"]["mode"] = "standard"
    decode = data["pools"]["decode"]
    decode.update(role="both", replicas={"min": 1, "max": 3, "initial": 2}, sim_faults={})
    decode["scaling"].update(
        stable_window_s=1, panic_window_s=0.5, scale_down_delay_s=1, interval_s=0.2,
        drain_timeout_s=2, target_concurrency=4,
    )  # fmt: skip
    data["pools"] = {"decode": decode}
    kubernetes = {"namespace": NS, "port": worker_port, "lease_duration_s": DURATION_S,
                  "lease_retry_s": RETRY_S}  # fmt: skip
    data["actuator"] = {"kind": "kubernetes", "kubernetes": kubernetes}
    data["gateway"]["metrics_interval_s"] = 0.2
    return data


def _kubeconfig(path: Path, server: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "gw", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gw"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Cluster:
    def __init__(self, tmp: Path, state: KubeApi, api_url: str, profile: Path) -> None:
        self.tmp, self.state, self.api_url, self.profile = tmp, state, api_url, profile
        self.gateways: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start_gateway(
        self, name: str, host: str = "127.0.0.1", port: int | None = None, probe: str = "/ready"
    ) -> str:
        port = port or free_port()
        env = {**os.environ, "HOME": str(self.tmp), "POD_NAME": name, "PDSERVE_API_KEYS": ""}
        env["KUBECONFIG"] = str(_kubeconfig(self.tmp / f"{name}.kube", self.api_url, name))
        env["PDSERVE_ADMIN_TOKEN"] = ADMIN_TOKEN
        env.pop("KUBERNETES_SERVICE_HOST", None)
        command = [sys.executable, "-m", "pdserve.cli", "gateway", "--profile", str(self.profile)]
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [*command, "--host", host, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://{host}:{port}"
        self.gateways[name] = (process, url)
        _wait(lambda: httpx.get(f"{url}{probe}", timeout=2).status_code == 200, 90, f"{name} up")
        return url

    def kill_gateways(self) -> None:
        for process, _ in self.gateways.values():
            process.kill()
            process.wait(10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def holder(self) -> str:
        return (self.state.lease_holder(LEASE) or "").split("_")[0]

    def patches_by(self, name: str) -> list[str]:
        return [c.path for c in self.state.calls if c.method == "PATCH" and c.authorization
                == f"Bearer {name}"]  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    worker_port = free_port()
    state = KubeApi(NS, deployments={"pdserve-decode": 2}, pod_ips=list(POD_HOSTS))
    workers = [subprocess.Popen(sim_argv("both", worker_port, ["--time-scale", "50"], host),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for host in POD_HOSTS]  # fmt: skip
    profile = tmp_path / "gateway.yaml"
    profile.write_text(yaml.safe_dump(_profile(worker_port)))
    try:
        for host, worker in zip(POD_HOSTS, workers, strict=True):
            wait_healthy(f"http://{host}:{worker_port}", 30, worker)
        for index in range(2):
            state.add_pod(f"pdserve-decode-{index}", "decode")
        with serve(state) as api_url:
            running = Cluster(tmp_path, state, api_url, profile)
            try:
                yield running
            finally:
                running.kill_gateways()
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(10)


def _last_decision(url: str) -> Any:
    pools = httpx.get(f"{url}/admin/pools", headers=ADMIN, timeout=10).json()
    return pools["decode"]["last_decision"]


def _lease_writes(cluster: Cluster, name: str) -> list[float]:
    """When the API server accepted each lease update from the gateway `name`."""
    return [c.at for c in cluster.state.calls if c.method == "PUT" and c.status == 200
            and c.authorization == f"Bearer {name}"]  # fmt: skip


class Traffic:
    """Completions through one gateway, back to back, in a thread; every status kept."""

    def __init__(self, url: str) -> None:
        self.url, self.statuses, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    status = client.post(f"{self.url}/v1/completions", json=BODY).status_code
                except httpx.HTTPError as error:
                    status = repr(error)
                self.statuses.append(status)
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_only_the_leader_scales_and_the_survivor_takes_over(cluster: Cluster) -> None:
    cluster.start_gateway("gw-a")
    _wait(lambda: cluster.holder() == "gw-a", 10, "gw-a to take the lease")
    b_url = cluster.start_gateway("gw-b")
    # idle: the leader drains one of the two replicas and patches the scale down to min (1)
    _wait(lambda: cluster.state.deployments["pdserve-decode"] == 1, 30, "the leader's scale-down")
    time.sleep(1.0)  # both gateways keep deciding; only one may act
    assert cluster.holder() == "gw-a"
    assert cluster.patches_by("gw-a"), cluster.log("gw-a")
    assert cluster.patches_by("gw-b") == [], cluster.log("gw-b")
    assert any(p.endswith("/deployments/pdserve-decode/scale") for p in cluster.patches_by("gw-a"))
    # the follower runs no autoscaler at all (it would drain replicas it does not own)
    a_url = cluster.gateways["gw-a"][1]
    assert _last_decision(a_url) is not None
    assert _last_decision(b_url) is None
    leader, _ = cluster.gateways["gw-a"]
    by_leader = len(cluster.patches_by("gw-a"))
    with Traffic(b_url) as traffic:
        time.sleep(0.5)
        leader.send_signal(signal.SIGKILL)  # no release: the lease must lapse
        killed = time.monotonic()
        _wait(lambda: cluster.holder() == "gw-b", DURATION_S + 10, "gw-b to take over")
        took = time.monotonic() - killed
        time.sleep(1.0)
    # never before the lease lapsed: the survivor's first write comes a whole duration after
    # the leader's last renewal reached the API server; and within one retry (+1 s) after that
    [last_renewal] = _lease_writes(cluster, "gw-a")[-1:]
    [taken] = _lease_writes(cluster, "gw-b")[:1]
    assert taken - last_renewal >= DURATION_S, taken - last_renewal
    assert took <= DURATION_S + 2 * RETRY_S + 1.0, took
    assert traffic.statuses and set(traffic.statuses) == {200}, traffic.statuses
    transitions = cluster.state.leases[LEASE]["spec"]["leaseTransitions"]
    assert transitions == 1
    # the survivor now scales: its last replica is gone, it brings one back (pod 127.0.0.2)
    [remaining] = [
        n for n, p in cluster.state.pods.items() if "deletionTimestamp" not in p["metadata"]
    ]
    cluster.state.pod_ips = [POD_HOSTS[0]]
    cluster.state.delete_pod(remaining)
    _wait(lambda: cluster.patches_by("gw-b"), 30, "gw-b's scale-up")
    answer = httpx.post(f"{b_url}/v1/completions", json=BODY, timeout=60)
    assert answer.status_code == 200, answer.text
    assert len(cluster.patches_by("gw-a")) == by_leader  # nothing from the dead one


@pytest.fixture
def cold_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The decode pool at zero (min 0, no pod), one worker ready for its first pod
    (127.0.0.2), and the two gateways' pods registered under the gateway label."""
    worker_port = free_port()
    state = KubeApi(NS, deployments={"pdserve-decode": 0}, pod_ips=[POD_HOSTS[0]])
    worker = subprocess.Popen(sim_argv("both", worker_port, ["--time-scale", "50"], POD_HOSTS[0]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    data = _profile(worker_port)
    data["pools"]["decode"]["replicas"] = {"min": 0, "max": 1, "initial": 0}
    data["pools"]["decode"]["scaling"]["interval_s"] = 30  # only the demand signal can wake it
    profile = tmp_path / "gateway.yaml"
    profile.write_text(yaml.safe_dump(data))
    try:
        wait_healthy(f"http://{POD_HOSTS[0]}:{worker_port}", 30, worker)
        for name, host in zip(("gw-a", "gw-b"), GATEWAY_HOSTS, strict=True):
            state.add_gateway_pod(name, host)
        with serve(state) as api_url:
            running = Cluster(tmp_path, state, api_url, profile)
            try:
                yield running
            finally:
                running.kill_gateways()
    finally:
        worker.kill()
        worker.wait(10)


def test_a_request_held_at_the_follower_wakes_the_pool_at_zero(cold_cluster: Cluster) -> None:
    """Only the leader autoscales; it must count the demand held at the other gateway."""
    port = free_port()
    cold_cluster.start_gateway("gw-a", GATEWAY_HOSTS[0], port, probe="/health")
    _wait(lambda: cold_cluster.holder() == "gw-a", 10, "gw-a to take the lease")
    b_url = cold_cluster.start_gateway("gw-b", GATEWAY_HOSTS[1], port, probe="/health")
    assert cold_cluster.state.deployments["pdserve-decode"] == 0
    # the follower answers the leader's poll only with the admin token
    assert httpx.get(f"{b_url}/admin/demand", timeout=5).status_code == 401
    assert httpx.get(f"{b_url}/admin/demand", headers=ADMIN, timeout=5).json() == {
        "decode": {"queued_requests": 0, "diverted_requests": 0, "prompt_tokens": 0}
    }
    answer = httpx.post(f"{b_url}/v1/completions", json=BODY, timeout=60)  # held at gw-b
    assert answer.status_code == 200, (answer.text, cold_cluster.log("gw-a"))
    assert cold_cluster.state.deployments["pdserve-decode"] == 1
    scale = "/apis/apps/v1/namespaces/serving/deployments/pdserve-decode/scale"
    assert cold_cluster.patches_by("gw-a") == [scale], cold_cluster.log("gw-a")
    assert cold_cluster.patches_by("gw-b") == []
