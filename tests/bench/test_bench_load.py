"""The load generator against a real simulated worker process (vLLM's API and timing model):
per-request TTFT, token timestamps and usage are measured, and a run writes JSON, Markdown and
CDF plots. Prompt building is checked on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tqdm import tqdm

from bench import load, workload
from pdserve.workers.sim.launch import SimFleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker_url() -> Iterator[str]:
    with SimFleet() as fleet:
        yield fleet.start("both")


@pytest.mark.unit
@pytest.mark.parametrize("tokens", [1, 2, 17, 128, 1800])
def test_prompt_has_the_asked_length_and_a_unique_prefix(tokens: int) -> None:
    # byte-level tokenizer without BOS: one token per character
    text = load.prompt_text(tokens, seq=7, chars_per_token=1.0)
    assert len(text) == tokens
    assert load.prompt_text(tokens, 8, 1.0) != text or tokens == 1
    assert load.prompt_text(tokens, 7, 1.0) == text  # seeded


@pytest.mark.unit
def test_streams_and_mix_parsing() -> None:
    assert load.parse_streams("chat=4,gen") == {"chat": 4, "gen": 1}
    with pytest.raises(ValueError, match="unknown request class"):
        load.parse_streams("nope=1")


def test_run_load_measures_every_token(worker_url: str) -> None:
    target = load.Target(url=worker_url, model="tiny")
    arrivals = workload.fixed_arrivals(0.5, 3.0)
    n = len(arrivals)
    requests = workload.Requests(
        arrivals, np.full(n, 300), np.full(n, 12), np.zeros(n, dtype=np.int64), ("rag",)
    )
    limits = load.Limits(duration_s=3.0, max_requests=50, drain_s=30.0)
    run = asyncio.run(load.run_load(target, limits, requests, {"chat": 1}, show_progress=False))
    assert run.results and all(r.ok for r in run.results), [r.error for r in run.results]
    rag = [r for r in run.results if r.kind == "rag"]
    assert len(rag) == n
    for r in rag:
        assert r.output_tokens == 12  # usage from the final chunk
        assert len(r.token_times) == 12  # one streamed chunk per token
        assert 0 < r.ttft <= r.e2e
        assert r.prompt_tokens == 300  # usage counts one token per character
        assert all(gap >= 0 for gap in r.itls)
    assert any(r.kind == "chat" for r in run.results)  # the closed-loop stream ran
    assert run.wall_s < 3.0 + 30.0


def test_main_writes_json_markdown_and_plot(worker_url: str, tmp_path: Path) -> None:
    code = load.main(
        [
            "--url",
            worker_url,
            "--arrival",
            "poisson",
            "--rate",
            "4",
            "--duration",
            "3",
            "--mix",
            "chat=1",
            "--slo-ttft",
            "5",
            "--slo-itl",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "load.json").read_text())
    summary = data["summary"]["all"]
    assert summary["requests"] == len(data["requests"]) > 0
    assert summary["errors"] == 0
    assert summary["goodput_rps"] > 0
    assert "| all |" in (tmp_path / "load.md").read_text()
    assert (tmp_path / "load_cdf.png").read_bytes()[:4] == b"\x89PNG"


def test_prompts_are_numbered_from_first_seq_so_runs_share_no_prefix() -> None:
    prompts: list[str] = []

    def worker(request: httpx.Request) -> httpx.Response:
        prompts.append(json.loads(request.content)["prompt"])
        chunk = {"choices": [{"text": "a"}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")

    async def two_runs() -> None:
        for first_seq in (1, 1_000_000):
            target = load.Target(url="http://w", model="tiny", first_seq=first_seq)
            limits = load.Limits(duration_s=10, max_requests=10, drain_s=1)
            async with httpx.AsyncClient(transport=httpx.MockTransport(worker)) as client:
                run = load._Run(client, target, limits, tqdm(disable=True))
                for _ in range(2):
                    await run.send("chat", 64, 1)

    asyncio.run(two_runs())
    heads = [prompt.split(" ", 1)[0] for prompt in prompts]
    assert heads == ["r1", "r2", "r1000000", "r1000001"]
