"""A real `pdserve up` subprocess driven with the official openai client: the OpenAI API, the
ready banner, `pdserve profile use`, and a clean stop on SIGTERM (no workers or ports left)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from pdserve.stack import Stack, stack
from tests.support import PROFILES

pytestmark = pytest.mark.integration

ADMIN = "up-admin"
LONG = "How vexingly quick daft zebras jump! " * 5  # 185 tokens >= threshold 64


@dataclass
class Up:
    stack: Stack
    banner: list[str]

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.stack.process

    @property
    def base_url(self) -> str:
        return self.stack.base_url


def _banner(log_path: Path, timeout_s: float = 10.0) -> list[str]:
    """The log's lines up to the banner's `try: curl` line: `pdserve up` prints it on the same
    rule the harness waits for, so it is there, or comes within moments."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = log_path.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if "try: curl" in line:
                return lines[: index + 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no banner within {timeout_s} s: {lines}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    env = {"PDSERVE_ADMIN_TOKEN": ADMIN, "PDSERVE_API_KEYS": ""}
    log_dir = tmp_path_factory.mktemp("up")
    with stack(PROFILES / "gw-disaggregated.yaml", env=env, log_dir=log_dir) as running:
        yield Up(running, _banner(running.log_path))


def _client(up: Up) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key="unused", max_retries=0)


def test_banner_prints_base_url_and_a_working_curl(up: Up) -> None:
    text = "\n".join(up.banner)
    assert f"{up.base_url}/v1" in text
    curl = next(line for line in up.banner if "try: curl" in line).split("try: ", 1)[1]
    output = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
    assert '"chat.completion"' in output.stdout


def test_openai_client_completion_chat_stream_and_usage(up: Up) -> None:
    client = _client(up)
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt=LONG, max_tokens=8, temperature=0, seed=1
    )
    assert raw.headers["x-pdserve-route"] == "disaggregated"
    assert raw.headers["x-pdserve-profile"] == "gw-disaggregated"
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    chat = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stop=["\n"]
    )
    assert chat.headers["x-pdserve-route"] == "local"
    assert chat.parse().choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": LONG}],
            max_tokens=7,
            top_p=0.9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 7
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="x" * 3000, max_tokens=2)
    assert caught.value.code == "context_length_exceeded"


def test_profile_use_switches_the_running_gateway(up: Up) -> None:
    target = str(PROFILES / "gw-standard.yaml")
    command = [sys.executable, "-m", "pdserve.cli", "profile", "use", target, "--url", up.base_url]
    denied = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "401" in denied.stderr
    result = subprocess.run(
        [*command, "--admin-token", ADMIN], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    raw = _client(up).completions.with_raw_response.create(model="tiny", prompt=LONG, max_tokens=3)
    assert raw.headers["x-pdserve-profile"] == "gw-standard"
    assert raw.headers["x-pdserve-route"] == "local"


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_sigterm_stops_every_worker_and_frees_every_port(up: Up) -> None:
    pools = httpx.get(
        f"{up.base_url}/admin/pools", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    urls = [e["url"] for pool in pools.values() for e in pool["endpoints"]]
    # the previous test's switch may leave old workers still stopping (no longer listening):
    # the ones serving must listen now; every listed one must be closed after the SIGTERM
    serving = [
        e["url"] for pool in pools.values() for e in pool["endpoints"] if e["state"] == "ready"
    ]
    assert serving and all(_listening(u) for u in serving)
    up.stack.note_tree()
    assert len(up.stack.members) >= 3  # pdserve up and its two workers
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(60) == 0
    assert not any(_listening(u) for u in [*urls, up.base_url])
    assert up.stack.survivors() == []  # every process of its tree, orphans included


def test_a_killed_gateway_leaves_no_worker_behind(tmp_path: Path) -> None:
    with stack(PROFILES / "gw-standard.yaml", log_dir=tmp_path) as running:
        pools = httpx.get(f"{running.base_url}/admin/pools").json()
        urls = [e["url"] for pool in pools.values() for e in pool["endpoints"]]
        assert urls and all(_listening(u) for u in urls)
        running.process.kill()  # no chance to stop anything itself
        running.process.wait(10)
        deadline = time.monotonic() + 30
        while any(_listening(u) for u in urls) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_listening(u) for u in urls)
