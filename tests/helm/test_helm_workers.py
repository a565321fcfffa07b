"""The chart's worker commands are pdserve's own: vLLM's command line exactly as
`vllm_command` composes it (and as vLLM's parser accepts it), the simulated worker's CLI, and the
preStop drain."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pdserve import profile as profiles
from pdserve.cli import build_parser
from pdserve.helm.render import render_values
from pdserve.workers.vllm_command import WorkerSpec, vllm_command
from tests.support.vllm_parser import vllm_server_parser

from .conftest import (
    RELEASE,
    SHIPPED,
    Objects,
    Template,
    chart_profile,
    named,
    worker_container,
)

pytestmark = pytest.mark.integration

PREFIX = f"{RELEASE}-pdserve"
CHART_ENV = ("POD_IP", "HF_HUB_OFFLINE", "HOME", "VLLM_API_KEY")  # the chart's, not the server's
VLLM_PROFILES = [name for name in SHIPPED if profiles.load(name).engine.kind.value == "vllm"]


@pytest.mark.parametrize("name", VLLM_PROFILES)
def test_pod_runs_exactly_the_workers_vllm_command(rendered: dict[str, Objects], name: str) -> None:
    loaded = chart_profile(name)
    for pool in loaded.pools:
        container = worker_container(named(rendered[name], "Deployment", f"{PREFIX}-{pool}"))
        spec = WorkerSpec.from_profile(loaded, pool, port=8000, side_channel_port=5600)
        model = "/models/tiny" if loaded.model.source == "tiny" else loaded.model.source
        expected = vllm_command(
            replace(spec, host="0.0.0.0", side_channel_host="$(POD_IP)", model=model,
                    python="python3")
        )  # fmt: skip
        assert container["command"] + container["args"] == expected.argv  # flag for flag
        server_env = [e for e in container["env"] if e["name"] not in CHART_ENV]
        assert server_env == [{"name": k, "value": v} for k, v in expected.env.items()]
        assert container["env"][0] == {  # defined before the $(POD_IP) that names it
            "name": "POD_IP",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        }


def test_the_chart_composes_no_vllm_flag(template: Template, tmp_path: Path) -> None:
    """Whatever flags the values carry are the container's, and nothing else: were the chart to
    add, drop or reorder one (compose flags itself), this would fail."""
    values = render_values(profiles.load("disaggregated"))
    made_up = ["--port", "8000", "--tensor-parallel-size", "1", "--made-up-flag", "x y"]
    for block in values["pools"].values():
        block["vllm"] = {
            "command": ["vllm-made-up"],
            "args": made_up,
            "env": [{"name": "ONLY", "value": "this"}],
        }
    values["pools"]["decode"]["extraArgs"] = ["--after", "all"]
    path = tmp_path / "made-up.yaml"
    path.write_text(yaml.safe_dump(values))
    objects = template(path)
    for pool, tail in (("prefill", []), ("decode", ["--after", "all"])):
        container = worker_container(named(objects, "Deployment", f"{PREFIX}-{pool}"))
        assert container["command"] == ["vllm-made-up"]
        assert container["args"] == made_up + tail
        server_env = [e for e in container["env"] if e["name"] not in CHART_ENV]
        assert server_env == [{"name": "ONLY", "value": "this"}]


@pytest.fixture(scope="module")
def vllm_parse() -> Callable[[list[str]], argparse.Namespace]:
    return vllm_server_parser()


def test_a100_l4_pod_args_parse_with_vllms_server_parser(
    rendered: dict[str, Objects], vllm_parse: Callable[[list[str]], argparse.Namespace]
) -> None:
    for pool in ("prefill", "decode"):
        container = worker_container(named(rendered["a100-l4"], "Deployment", f"{PREFIX}-{pool}"))
        parsed = vllm_parse(container["args"])
        assert parsed.tensor_parallel_size == 1
        assert parsed.max_model_len == 16384
        assert parsed.kv_transfer_config.kv_connector == "NixlConnector"
        assert parsed.kv_transfer_config.kv_buffer_device == "cuda"
        assert parsed.kv_transfer_config.kv_load_failure_policy == "recompute"


def test_simulated_pool_runs_pdserve_worker_with_flags_its_cli_accepts(
    rendered: dict[str, Objects],
) -> None:
    for pool in profiles.load("sim").pools:
        deployment = named(rendered["sim"], "Deployment", f"{PREFIX}-{pool}")
        container = worker_container(deployment)
        command = container["command"]
        assert command[:2] == ["pdserve", "worker"]
        args = build_parser().parse_args(command[1:])
        assert (args.profile, args.pool, args.port) == ("/etc/pdserve/profile.yaml", pool, 8000)
        assert container["image"].startswith("ghcr.io/pdserve/pdserve:")
        pod = deployment["spec"]["template"]["spec"]
        assert "affinity" not in pod  # simulated A100/L4: no GPU needed
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def worker_metrics() -> Iterator[Callable[[int], tuple[int, list[float]]]]:
    """A /metrics endpoint busy (one running request) for its first `busy_polls` scrapes, then
    idle; returns its port and the times it was scraped."""
    servers: list[ThreadingHTTPServer] = []

    def start(busy_polls: int) -> tuple[int, list[float]]:
        scrapes: list[float] = []

        class Handler(_Metrics):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                scrapes.append(time.monotonic())
                running = 1.0 if len(scrapes) <= busy_polls else 0.0
                self.body = (
                    f'vllm:num_requests_running{{model_name="m"}} {running}\n'
                    'vllm:num_requests_waiting{model_name="m"} 0.0\n'
                ).encode()
                super().do_GET()

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], scrapes

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _drain_script(rendered: dict[str, Objects], port: int) -> str:
    container = worker_container(named(rendered["a100-l4"], "Deployment", f"{PREFIX}-decode"))
    script = container["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "deadline = time.monotonic() + 300" in script  # the pool's drain_timeout_s
    return script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def _run(script: str) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


@pytest.mark.parametrize("busy_polls", [0, 2])
def test_prestop_drain_waits_until_the_worker_is_idle(
    rendered: dict[str, Objects],
    worker_metrics: Callable[[int], tuple[int, list[float]]],
    busy_polls: int,
) -> None:
    port, scrapes = worker_metrics(busy_polls)
    elapsed = _run(_drain_script(rendered, port))
    assert len(scrapes) == busy_polls + 1  # polled while busy, returned at the first idle look
    # a 5 s grace for the gateway to stop routing, then a poll every 2 s while busy
    assert elapsed >= 5 + 2 * busy_polls
