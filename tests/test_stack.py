"""The stack harness (pdserve.stack) around a real `pdserve up`: the shipped `sim` profile up by
the one readiness rule and down with no process or port left; a stack that cannot start raises
with its log's tail, within a bound."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from pdserve.stack import StackError, accepts, stack

pytestmark = pytest.mark.integration

OPEN = {"PDSERVE_ADMIN_TOKEN": "", "PDSERVE_API_KEYS": ""}


def test_sim_is_ready_by_the_rule_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with stack("sim", env=OPEN, log_dir=tmp_path) as running:
        ready = httpx.get(f"{running.base_url}/ready", timeout=5)
        # sim.yaml starts one prefill and one decode replica: both serve, not just decode
        assert ready.status_code == 200
        assert ready.json()["pools"] == {"prefill": 1, "decode": 1}
        pools = httpx.get(f"{running.base_url}/admin/pools", timeout=5).json()
        workers = [(e["url"], e["state"]) for pool in pools.values() for e in pool["endpoints"]]
        assert sorted(state for _, state in workers) == ["ready", "ready"]
        root = psutil.Process(running.process.pid)
        tree = [root, *root.children(recursive=True)]
        assert len(tree) >= 3  # pdserve up and its two workers
        ports = {running.port} | {int(url.rsplit(":", 1)[1]) for url, _ in workers}
        assert all(accepts("127.0.0.1", port) for port in ports)
    assert running.process.returncode == 0  # a clean stop of `pdserve up` on SIGTERM
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert not any(accepts("127.0.0.1", port) for port in ports)
    assert "pdserve stopped: every worker is down" in running.log_path.read_text()


def test_up_exiting_at_start_raises_with_the_log_tail(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StackError) as failure, stack("sim", log_dir=tmp_path, args=["--nope"]):
        pass
    assert time.monotonic() - started < 30
    assert "exited with 2" in str(failure.value)
    assert "unrecognized arguments: --nope" in str(failure.value)  # argparse's line, from the log


def test_a_pool_that_never_serves_raises_within_the_bound(tmp_path: Path) -> None:
    profile = yaml.safe_load(Path("profiles/sim.yaml").read_text())
    profile["pools"]["prefill"]["sim_faults"] = {"refuse": 1}  # the port never opens
    path = tmp_path / "sim-refuses.yaml"
    path.write_text(yaml.safe_dump(profile))
    started = time.monotonic()
    with pytest.raises(StackError) as failure, stack(path, log_dir=tmp_path, ready_timeout_s=8):
        pass
    assert 8 <= time.monotonic() - started < 8 + 90  # the wait, then the teardown
    assert "not ready within 8 s" in str(failure.value)
    assert "starting profile sim-refuses" in str(failure.value)  # the log's tail


def test_a_port_in_use_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is in use")
        with refused, stack("sim", log_dir=tmp_path, port=port):
            pass
    assert list(tmp_path.iterdir()) == []  # nothing was started
