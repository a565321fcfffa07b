"""The chart's worker commands agree with pdserve's own: vLLM's flags as the workers compose them
(and as vLLM's parser accepts them), the simulated worker's CLI, and the preStop drain."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pdserve import profile as profiles
from pdserve.cli import build_parser
from pdserve.workers.vllm_command import WorkerSpec, vllm_command

from .conftest import RELEASE, SHIPPED, Objects, named, worker_container

pytestmark = pytest.mark.integration

PREFIX = f"{RELEASE}-pdserve"
VLLM_PROFILES = [name for name in SHIPPED if profiles.load(name).engine.kind.value == "vllm"]
KV_FLAG = "--kv-transfer-config"


def _split_kv_config(args: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """The args without the connector JSON, and that JSON parsed (spacing differs)."""
    if KV_FLAG not in args:
        return args, None
    index = args.index(KV_FLAG)
    return args[:index] + args[index + 2 :], json.loads(args[index + 1])


@pytest.mark.parametrize("name", VLLM_PROFILES)
def test_pod_args_equal_the_workers_vllm_command(rendered: dict[str, Objects], name: str) -> None:
    loaded = profiles.load(name)
    for pool in loaded.pools:
        container = worker_container(named(rendered[name], "Deployment", f"{PREFIX}-{pool}"))
        model = container["args"][container["args"].index("--model") + 1]
        spec = WorkerSpec.from_profile(loaded, pool, port=8000, side_channel_port=5600)
        expected = vllm_command(replace(spec, host="0.0.0.0", model=model, python="python3"))
        assert container["command"] == expected.argv[:3]
        got_args, got_kv = _split_kv_config(container["args"])
        want_args, want_kv = _split_kv_config(expected.argv[3:])
        assert got_args == want_args
        assert got_kv == want_kv
        env = {e["name"]: e.get("value") for e in container["env"]}
        for key, value in expected.env.items():
            if key != "VLLM_NIXL_SIDE_CHANNEL_HOST":  # the pod IP, from the downward API
                assert env[key] == value, key


@pytest.fixture(scope="module")
def vllm_parse() -> Callable[[list[str]], argparse.Namespace]:
    """vLLM's own server parser and post-parse checks."""
    with warnings.catch_warnings():  # torch and vLLM deprecations raised at import time
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm.entrypoints.launchers.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = make_arg_parser(FlexibleArgumentParser())

    def parse(args: list[str]) -> argparse.Namespace:
        parsed = parser.parse_args(args)
        validate_parsed_serve_args(parsed)
        return parsed

    return parse


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
