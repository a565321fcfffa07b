"""Real vLLM CPU workers for the `vllm` tier, started through `pdserve worker` and reused.

A pytest plugin (tests/conftest.py loads it), so every folder's vllm tests share one cluster.

One session-scoped `Cluster` owns every worker. A test asks for the workers it needs by name
(`cluster.require("prefill", "decode", "both")`); missing ones start concurrently, workers
already up are reused, and at most three run at once (each takes ~3.4 GB and a core's worth of
start-up). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from pdserve.disagg import prefill_request
from pdserve.processes import free_port
from pdserve.workers.checkpoint import ensure_model
from pdserve.workers.pinning import tree_pids

MAX_SERVERS = 3
START_TIMEOUT_S = 400.0  # ~60 s cold alone, up to ~105 s for three at once on 2 cores
STOP_TIMEOUT_S = 60.0
LEASE_S = 6  # prefill blocks not pulled within this are freed (short, for the lease test)

# Worker name -> `pdserve worker` flags. Prefill and decode each own a core; the unified
# reference shares core 0. One OpenMP thread each: equal thread counts keep float32 exact.
WORKERS: dict[str, list[str]] = {
    "prefill": ["--role", "prefill", "--cores", "0"],
    "decode": ["--role", "decode", "--cores", "1"],
    "both": ["--role", "both", "--cores", "0"],
    "decode-fail": ["--role", "decode", "--cores", "1", "--kv-load-failure-policy", "fail"],
}
LORA = ["--enable-lora", "--max-loras", "2", "--lora-modules", "pirate=seeded:tiny/pirate"]
WORKERS.update({f"{name}-lora": [*WORKERS[name], *LORA] for name in ("prefill", "decode", "both")})
"""The same three with LoRA on and the seeded adapter `pirate` loaded (issue 16's tests)."""


@dataclass
class Worker:
    name: str
    port: int
    side_channel_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def tree(self) -> list[int]:
        return tree_pids(self.process.pid)

    def metrics(self) -> dict[str, float]:
        """`name{label="v",...}` -> value, from the worker's /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}"] = sample.value
        return values

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(
            value
            for key, value in self.metrics().items()
            if key.split("{", 1)[0] == name and all(w in key for w in wanted)
        )


class Cluster:
    def __init__(self, model: Path, log_dir: Path) -> None:
        self.model = model
        self.log_dir = log_dir
        self.running: dict[str, Worker] = {}
        self.lease_s = LEASE_S
        self.starts: list[tuple[str, float]] = []  # (name, seconds to ready), for the report

    def require(self, *names: str) -> dict[str, Worker]:
        """The named workers, up and healthy (started concurrently when missing)."""
        missing = [name for name in names if not self._healthy(name)]
        surplus = len(set(self.running) | set(missing)) - MAX_SERVERS
        for name in [n for n in list(self.running) if n not in names][: max(surplus, 0)]:
            self.stop(name)
        for name in missing:
            self.stop(name)
            self.running[name] = self._spawn(name)
        for name in missing:
            self._wait_ready(self.running[name])
        return {name: self.running[name] for name in names}

    def _healthy(self, name: str) -> bool:
        worker = self.running.get(name)
        if worker is None or worker.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{worker.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self, name: str) -> Worker:
        """Stop `name` and start it again on the same ports (a new vLLM engine id)."""
        old = self.running[name]
        self.stop(name)
        self.running[name] = self._spawn(name, old.port, old.side_channel_port)
        self._wait_ready(self.running[name])
        return self.running[name]

    def _spawn(self, name: str, port: int | None = None, side: int | None = None) -> Worker:
        port, side = port or free_port(), side or free_port()
        log_path = self.log_dir / f"{name}-{port}.log"
        argv = [sys.executable, "-m", "pdserve.cli", "worker", *WORKERS[name]]
        argv += ["--model", str(self.model), "--served-model-name", "tiny"]
        argv += ["--port", str(port), "--side-channel-port", str(side)]
        argv += ["--block-lease-s", str(LEASE_S), "--ready-timeout", str(START_TIMEOUT_S)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        return Worker(name, port, side, process, log_path)

    def _wait_ready(self, worker: Worker) -> None:
        deadline = worker.started_at + START_TIMEOUT_S + 10
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"{worker.name} exited at start:\n{worker.log_tail()}")
            found = re.search(r"^ready in ([0-9.]+)s$", worker.log_path.read_text(), re.M)
            if found:
                worker.ready_seconds = float(found.group(1))
                self.starts.append((worker.name, worker.ready_seconds))
                return
            time.sleep(0.5)
        raise TimeoutError(f"{worker.name} not ready in {START_TIMEOUT_S}s:\n{worker.log_tail()}")

    def stop(self, name: str) -> None:
        """SIGTERM `pdserve worker` (it stops vLLM's tree); SIGKILL what is left after a bound."""
        worker = self.running.pop(name, None)
        if worker is None:
            return
        tree = worker.tree()
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=STOP_TIMEOUT_S)
        kill_pids(tree)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=10)

    def crash(self, name: str) -> None:
        """SIGKILL every process of the worker at once, as a machine failure would."""
        worker = self.running.pop(name)
        kill_pids(worker.tree())
        worker.process.wait(timeout=30)

    def close(self) -> None:
        for name in list(self.running):
            self.stop(name)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---- requests: the P/D hop built from pdserve.disagg, calls through the openai client ----

MAX_TOKENS = 24
CHAT_OVERHEAD = 3  # "<|user|>" + "\n" + "<|assistant|>" around the content


def prompt_text(length: int, salt: str) -> str:
    """`length` printable ASCII characters (= tokens: the tiny tokenizer is one per byte),
    unique per salt so no worker serves it from its prefix cache."""
    rng = random.Random(f"{salt}/{length}")
    return "".join(chr(rng.randrange(32, 127)) for _ in range(length))


@dataclass(frozen=True)
class Output:
    text: str
    token_ids: list[int]


def body_for(api: str, length: int, stream: bool) -> dict[str, Any]:
    salt = f"{api}-{stream}"
    common: dict[str, Any] = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0}
    if api == "chat":
        content = prompt_text(max(length - CHAT_OVERHEAD, 1), salt)
        body = {**common, "messages": [{"role": "user", "content": content}]}
    else:
        body = {**common, "prompt": prompt_text(length, salt)}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


EXTRA_KEYS = ("kv_transfer_params",)


def call(base_url: str, body: dict[str, Any]) -> Output:
    """One request through the official openai client; vLLM extras go in extra_body."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)
    params = {k: v for k, v in body.items() if k not in EXTRA_KEYS}
    extra = {k: body[k] for k in EXTRA_KEYS if k in body}
    extra.update({"return_token_ids": True, "ignore_eos": True})
    create = client.chat.completions.create if "messages" in body else client.completions.create
    response = create(**params, extra_body=extra)
    if not body.get("stream"):
        choice = response.choices[0]
        text = choice.message.content if "messages" in body else choice.text
        return Output(text or "", list(choice.model_extra["token_ids"]))
    text, token_ids = [], []
    for chunk in response:
        for choice in chunk.choices:
            piece = choice.delta.content if "messages" in body else choice.text
            text.append(piece or "")
            token_ids.extend(choice.model_extra.get("token_ids") or [])
    return Output("".join(text), token_ids)


def prefill(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(f"{base_url}{path}", json=prefill_request(body), timeout=120)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="session")
def pd() -> SimpleNamespace:
    """The request helpers above, for tests (conftest modules are not imported by name)."""
    return SimpleNamespace(
        MAX_TOKENS=MAX_TOKENS, body_for=body_for, call=call, prefill=prefill, Output=Output
    )


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_model("tiny")


@pytest.fixture(scope="session")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        pytest.fail("the vllm tier binds workers to cores 0 and 1: run it on a machine with both")
    running = Cluster(tiny_model, tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield running
    finally:
        running.close()
        for name, seconds in running.starts:
            print(f"\n[vllm tier] {name} ready in {seconds:.1f}s")
