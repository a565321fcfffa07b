"""Ray beyond one machine: a Ray cluster of two nodes (`ray start --head` and a second
`ray start --address`), each declaring its accelerator as a custom resource ("A100" on one, "L4"
on the other). With `accelerator_as: resource` the Ray actuator asks for the pool's accelerator,
so prefill actors land on the A100 node and decode actors on the L4 node, and a P/D request
through the gateway goes from one to the other (simulated workers: no GPU here).

Both nodes run on this machine (as separate raylets with their own object stores); each
`ray start --block` is this test's child and is stopped by its pid (never `ray stop`, which
would stop every Ray on the machine). The gateway is its own process (a Ray driver with token
auth on, as the nodes): the test process never joins the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pdserve.actuators.ray import NODE_LABEL
from pdserve.processes import free_port, stop_tree

pytestmark = pytest.mark.integration

RAY = Path(sys.executable).parent / "ray"  # the CLI of the Ray this Python imports
ADMIN = "ray-admin"
OBJECT_STORE = str(100 * 1024 * 1024)  # bytes per node: the workers move no objects
LONG = " ".join(f"word{i}" for i in range(60))  # over the prefill threshold: the P/D hop


def _ray_start(tmp: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = _ray_env()
    command = [str(RAY if RAY.exists() else "ray"), "start", "--block", "--disable-usage-stats"]
    return subprocess.Popen(
        [*command, "--num-cpus", "1", "--object-store-memory", OBJECT_STORE, *flags],
        env=env, stdout=(tmp / "ray.log").open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
deadline = time.monotonic() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({n["NodeID"]: sorted(n["Resources"]) for n in ray.nodes() if n["Alive"]}))
"""


def _ray_env() -> dict[str, str]:
    """Ray's token auth on every node and driver (the token: ~/.ray/auth_token, which Ray
    writes when it is missing); set only in the processes this test starts."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def _node_kinds(address: str) -> dict[str, str]:
    """Node id -> the accelerator resource it declares, asked by a driver of its own."""
    script = [sys.executable, "-c", NODES_SCRIPT, address]
    result = subprocess.run(script, env=_ray_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    nodes = json.loads(result.stdout.strip().splitlines()[-1])
    kinds = {node: next((k for k in ("A100", "L4") if k in res), "") for node, res in nodes.items()}
    assert sorted(kinds.values()) == ["A100", "L4"], nodes
    return kinds


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The cluster's address, and node id -> the accelerator it has."""
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [
        _ray_start(
            tmp, "--head", "--port", str(port), "--include-dashboard", "false",
            "--temp-dir", str(tmp / "t"), "--resources", json.dumps({"A100": 1}),
        )
    ]  # fmt: skip
    try:
        nodes.append(_ray_start(tmp, "--address", address, "--resources", json.dumps({"L4": 1})))
        yield address, _node_kinds(address)
    finally:
        for node in reversed(nodes):
            stop_tree(node.pid, 20)


def _profile(address: str) -> dict[str, Any]:
    scaling = {"interval_s": 0.5, "stable_window_s": 5, "scale_down_delay_s": 60}
    pool = {"replicas": {"min": 1, "max": 1}, "scaling": scaling}
    ray_spec = {"address": address, "num_cpus_per_replica": 0.5, "accelerator_as": "resource"}
    return {
        "name": "ray-two-nodes",
        "engine": {"kind": "sim", "sim_timing": "vllm-cpu-tiny", "sim_time_scale": 20},
        "routing": {"mode": "disaggregated", "prefill_threshold": 128},
        "pools": {
            "prefill": {"role": "prefill", "accelerator": "nvidia-a100-80gb", **pool},
            "decode": {"role": "decode", "accelerator": "nvidia-l4", **pool},
        },
        "actuator": {"kind": "ray", "ray": ray_spec},
        "gateway": {"metrics_interval_s": 0.2},
    }


def _endpoints(base: str) -> dict[str, list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    pools = httpx.get(f"{base}/admin/pools", headers=headers, timeout=10).json()
    return {name: pool["endpoints"] for name, pool in pools.items()}


@contextlib.contextmanager
def _gateway(tmp: Path, address: str) -> Iterator[str]:
    """`pdserve gateway` on the Ray cluster, as its own driver process."""
    profile = tmp / "ray-two-nodes.yaml"
    profile.write_text(yaml.safe_dump(_profile(address)))
    port = free_port()
    env = {**_ray_env(), "PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    command = [sys.executable, "-m", "pdserve.cli", "gateway", "--profile", str(profile)]
    log = (tmp / "gateway.log").open("wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_tree(process.pid, 30)
        log.close()


def test_prefill_lands_on_a100_decode_on_l4_and_a_pd_request_crosses(
    two_nodes: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, kinds = two_nodes
    with _gateway(tmp_path, address) as base:
        deadline = time.monotonic() + 180
        endpoints: dict[str, list[dict[str, Any]]] = {}
        while not endpoints or not all(len(e) == 1 for e in endpoints.values()):
            assert time.monotonic() < deadline, (endpoints, (tmp_path / "gateway.log").read_text())
            time.sleep(0.5)
            with contextlib.suppress(httpx.HTTPError, ValueError):
                endpoints = _endpoints(base)
        landed = {pool: kinds[e[0]["labels"][NODE_LABEL]] for pool, e in endpoints.items()}
        assert landed == {"prefill": "A100", "decode": "L4"}
        body = {"model": "tiny", "prompt": LONG, "max_tokens": 4}
        answer = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-pdserve-route"] == "disaggregated"
        assert answer.json()["usage"]["completion_tokens"] == 4
