"""`pdserve up`'s start lines, pure: a worker's phase from its log and its replica state.

tests/data/vllm-0.32-cpu-start.log: the start of a real vLLM 0.32 CPU prefill worker's log under
`pdserve up` on this project's machine (request lines dropped), up to "Application startup
complete."."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.up_progress import Phase, Seen, Start, advance, phase_of_lines

pytestmark = pytest.mark.unit

VLLM_START = (Path(__file__).parent / "data" / "vllm-0.32-cpu-start.log").read_text().splitlines()


def _index(text: str) -> int:
    return next(i for i, line in enumerate(VLLM_START) if text in line)


def test_phases_of_a_real_vllm_start() -> None:
    loading = _index("Starting to load model")
    loaded = _index("Loading weights took")
    assert phase_of_lines(VLLM_START[:loading]) is Phase.launching
    assert phase_of_lines(VLLM_START[: loading + 1]) is Phase.loading_weights
    assert phase_of_lines(VLLM_START[: loaded + 1]) is Phase.warming_up
    # the log alone never says ready: the gateway's probe does
    assert phase_of_lines(VLLM_START) is Phase.warming_up


def test_a_phase_never_goes_back() -> None:
    shard_bar = [line for line in VLLM_START if "Loading safetensors checkpoint shards" in line]
    assert shard_bar  # a later progress-bar line of the loading phase
    assert phase_of_lines(shard_bar, Phase.warming_up) is Phase.warming_up


def _seen(state: str, lines: list[str], launched_at: float = 100.0) -> Seen:
    return Seen("decode-1", "decode", state, tuple(lines), launched_at)


def test_advance_prints_a_line_per_phase_change_with_seconds_since_launch() -> None:
    loading = _index("Starting to load model")
    loaded = _index("Loading weights took")
    polls = [
        (100.5, _seen("starting", VLLM_START[:loading])),
        (101.0, _seen("starting", [])),  # nothing new: no line
        (112.0, _seen("starting", VLLM_START[loading : loading + 3])),
        (113.2, _seen("starting", VLLM_START[loaded : loaded + 1])),
        (131.5, _seen("ready", [])),
        (132.0, _seen("ready", [])),
    ]
    starts: dict[str, Start] = {}
    printed: list[str] = []
    for now, seen in polls:
        starts, lines = advance(starts, [seen], now)
        printed += lines
    assert [line.split() for line in printed] == [
        ["decode-1", "launching", "0.5", "s"],
        ["decode-1", "loading", "weights", "12.0", "s"],
        ["decode-1", "warming", "up", "13.2", "s", "(weights", "loaded", "in", "0.66", "s)"],
        ["decode-1", "ready", "31.5", "s"],
    ]
    assert starts["decode-1"] == Start("decode", Phase.ready, 100.0)


def test_phases_passed_within_one_poll_each_get_a_line() -> None:
    """As seen on a real start: the weights of a small model load in 0.66 s, inside one poll."""
    loaded = _index("Loading weights took")
    starts, lines = advance({}, [_seen("starting", VLLM_START[:3])], 101.0)
    starts, lines = advance(starts, [_seen("starting", VLLM_START[3 : loaded + 1])], 142.4)
    assert [line.split()[1:4] for line in lines] == [
        ["loading", "weights", "42.4"],
        ["warming", "up", "42.4"],
    ]
    # the ready probe and a log line in the same poll: the log's phase first
    starts, lines = advance({}, [_seen("ready", VLLM_START)], 150.0)
    assert [line.split()[1] for line in lines] == ["launching", "loading", "warming", "ready"]


def test_a_worker_that_fails_says_so() -> None:
    starts, lines = advance({}, [_seen("starting", [])], 100.0)
    starts, lines = advance(starts, [_seen("failed", [])], 104.0)
    assert lines == ["  decode-1     failed              4.0 s"]


def test_start_watch_reads_only_whole_new_lines_of_each_log(tmp_path: Path) -> None:
    from pdserve.up import StartWatch

    log = tmp_path / "decode-1.log"
    log.write_text(VLLM_START[0] + "\n(Worker pid=1) INFO [cpu_model_runner.py:68] Starting to lo")
    endpoint = {"id": "decode-1", "state": "starting", "labels": {"log": str(log)}}
    pools = {"decode": {"in_profile": True, "endpoints": [endpoint]}}
    watch = StartWatch()
    assert [line.split()[1] for line in watch.lines(pools, now=0.0)] == ["launching"]
    with log.open("a") as handle:  # the marker's line completes
        handle.write("ad model /m...\n")
    assert [line.split()[1:3] for line in watch.lines(pools, now=1.0)] == [["loading", "weights"]]
    assert watch.lines(pools, now=2.0) == []  # nothing new
    endpoint["state"] = "ready"
    assert [line.split()[1] for line in watch.lines(pools, now=3.0)] == ["ready"]
