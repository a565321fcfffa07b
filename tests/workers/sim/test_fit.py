"""The CPU timing fit (pdserve.workers.sim.fit): known parameters come back from measurements
they generated, inputs that cannot determine them are refused by name, the fitted file loads as
a timing, and `pdserve fit-sim` recovers a simulated worker's known timing from its stream."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pdserve.workers.sim import roofline
from pdserve.workers.sim.fit import FitError, Observation, TimingFit, fit_cpu, predict
from pdserve.workers.sim.launch import SimFleet
from pdserve.workers.sim.timing import load_timing

# a made-up CPU, neither the preset nor any machine: the fit must find these numbers
KNOWN = dataclasses.replace(
    roofline.CPU, flops=37e9, mem_bw=2.5e9, step_overhead_s=7e-3, mfu=1.0, mbu=1.0
)
KNOWN_REQUEST_S = 4e-3
KNOWN_SEQ_S = 0.25e-3  # per sequence in a step
LENGTHS = (32, 128, 384, 768, 1152, 1536)


def _measured(
    acc: roofline.Accelerator,
    request_s: float,
    noise: float = 0.0,
    batches: tuple[int, ...] = (4, 8),
) -> list[Observation]:
    """What a worker timed by `acc` would show: TTFT per prompt, ITL after it, ITL by batch."""
    rng = random.Random(7)
    known = TimingFit(acc, request_s, "tiny", 0, 0.0, KNOWN_SEQ_S)
    shapes = [Observation("ttft", 1.0, n) for n in LENGTHS]
    shapes += [Observation("itl", 1.0, 0, 1, n + 8) for n in LENGTHS]
    shapes += [Observation("itl", 1.0, 0, k, k * 96) for k in batches]
    return [
        dataclasses.replace(o, seconds=predict(known, o) * (1 + rng.uniform(-noise, noise)))
        for o in shapes
    ]


def _close(got: float, want: float, rel: float) -> bool:
    return abs(got / want - 1) <= rel


@pytest.mark.unit
def test_exact_measurements_give_back_every_parameter() -> None:
    fit = fit_cpu(_measured(KNOWN, KNOWN_REQUEST_S))
    acc = fit.accelerator
    assert _close(acc.effective_flops, 37e9, 1e-6)
    assert _close(acc.effective_bw, 2.5e9, 1e-6)  # decode is memory-bound at 2.5 GB/s
    assert _close(acc.step_overhead_s, 7e-3, 1e-6)
    assert _close(fit.request_overhead_s, KNOWN_REQUEST_S, 1e-6)
    assert _close(fit.seq_overhead_s, KNOWN_SEQ_S, 1e-6)  # from ITL at batch 1, 4 and 8
    assert fit.rms_relative_error < 1e-6
    assert acc.name == "cpu" and acc.link_bw == roofline.CPU.link_bw  # the rest stays the CPU's


@pytest.mark.unit
def test_noisy_measurements_stay_near_the_parameters() -> None:
    fit = fit_cpu(_measured(KNOWN, KNOWN_REQUEST_S, noise=0.03))
    assert _close(fit.accelerator.effective_flops, 37e9, 0.10)
    assert _close(fit.accelerator.step_overhead_s, 7e-3, 0.20)
    # what the simulator runs on: every step within 5% of the truth
    truth = TimingFit(KNOWN, KNOWN_REQUEST_S, "tiny", 0, 0.0, KNOWN_SEQ_S)
    for obs in _measured(KNOWN, KNOWN_REQUEST_S):
        assert _close(predict(fit, obs), predict(truth, obs), 0.05), obs


@pytest.mark.unit
def test_one_load_spike_in_a_repeat_does_not_move_the_fit() -> None:
    clean = _measured(KNOWN, KNOWN_REQUEST_S)
    spiked = [dataclasses.replace(clean[0], seconds=clean[0].seconds * 10)]
    fit = fit_cpu(clean + clean + spiked)  # three repeats, one of them 10x slow
    assert _close(fit.accelerator.effective_flops, 37e9, 1e-6)
    assert fit.observations == 2 * len(clean) + 1


@pytest.mark.unit
def test_a_decode_without_memory_cost_still_fits_every_step() -> None:
    fast_memory = dataclasses.replace(KNOWN, mem_bw=1e15)
    measured = _measured(fast_memory, KNOWN_REQUEST_S, batches=())
    fit = fit_cpu(measured)  # batch 1 only: the overheads split as they may
    for obs in measured:
        assert _close(predict(fit, obs), obs.seconds, 1e-3), obs


@pytest.mark.unit
def test_decode_falling_with_context_keeps_the_bandwidth_from_binding() -> None:
    # noise can make a lone decode a hair faster at long context: no bandwidth fits that, so
    # the memory term is kept under the compute term of every step, never negative or infinite
    measured = [
        dataclasses.replace(o, seconds=7.4e-3 * (1 - 1e-5 * o.decode_context))
        if o.kind == "itl" else o
        for o in _measured(KNOWN, KNOWN_REQUEST_S, batches=())
    ]  # fmt: skip
    acc = fit_cpu(measured).accelerator
    assert 0 < acc.mem_bw < float("inf")
    for obs in measured:
        prefill = obs.prefill_tokens
        flops, moved = roofline.step_work(
            roofline.TINY, prefill, obs.decode_batch, obs.decode_context
        )
        assert moved / acc.effective_bw <= flops / acc.effective_flops * (1 + 1e-9), obs


@pytest.mark.unit
@pytest.mark.parametrize(
    "keep,match",
    [
        (lambda o: o.kind == "itl" or o.prefill_tokens == 128, "at least two different lengths"),
        (lambda o: o.kind == "ttft", "no inter-token latency"),
    ],
    ids=["one-prompt-length", "no-itl"],
)
def test_measurements_that_cannot_determine_the_timing_are_refused(
    keep: Callable[[Observation], bool], match: str
) -> None:
    with pytest.raises(FitError, match=match):
        fit_cpu([o for o in _measured(KNOWN, KNOWN_REQUEST_S) if keep(o)])


@pytest.mark.unit
def test_ttft_flat_in_prompt_length_has_no_compute_rate() -> None:
    flat = [dataclasses.replace(o, seconds=0.02) if o.kind == "ttft" else o
            for o in _measured(KNOWN, KNOWN_REQUEST_S)]  # fmt: skip
    with pytest.raises(FitError, match="does not grow with prompt length"):
        fit_cpu(flat)


@pytest.mark.unit
def test_a_non_positive_duration_is_refused() -> None:
    bad = _measured(KNOWN, KNOWN_REQUEST_S)
    bad[3] = dataclasses.replace(bad[3], seconds=0.0)
    with pytest.raises(FitError, match="positive and finite"):
        fit_cpu(bad)


@pytest.mark.unit
def test_the_fit_file_loads_as_the_timing_it_describes(tmp_path: Path) -> None:
    fit = fit_cpu(_measured(KNOWN, KNOWN_REQUEST_S))
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(fit.to_yaml_data(note="test")))
    timing = load_timing(str(path))
    assert timing.accelerator == fit.accelerator
    assert timing.request_overhead_s == pytest.approx(KNOWN_REQUEST_S)
    assert timing.seq_overhead_s == pytest.approx(KNOWN_SEQ_S)
    # the loaded timing runs the steps the fit predicts (a lone decode, a batch of 8)
    for batch in (1, 8):
        obs = Observation("itl", 1.0, 0, batch, batch * 100)
        assert timing.step_seconds(0, batch, batch * 100) == pytest.approx(predict(fit, obs))
    assert (timing.model, timing.block_size) == (roofline.TINY, 128)  # the rest is the base's
    assert timing.name == "vllm-cpu-tiny-fit"


@pytest.mark.unit
def test_a_misspelt_accelerator_field_in_a_timing_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("accelerator: {base: cpu, flop: 1.0e+9}\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['flop'\]"):
        load_timing(str(path))


@pytest.mark.integration
def test_fit_sim_recovers_a_simulated_workers_known_timing(tmp_path: Path) -> None:
    known = tmp_path / "known.yaml"
    known.write_text(
        "base: vllm-cpu-tiny\nrequest_overhead_s: 0.004\nseq_overhead_s: 0.0003\n"
        "accelerator: {base: cpu, flops: 3.7e+10, mem_bw: 2.5e+9, step_overhead_s: 0.007}\n"
    )
    out = tmp_path / "fitted.yaml"
    with SimFleet() as fleet:
        url = fleet.start("both", flags=["--timing", str(known)])
        done = subprocess.run(
            [sys.executable, "-m", "pdserve.cli", "fit-sim", "--url", url, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    fitted, truth = load_timing(str(out)), load_timing(str(known))
    # the steps a simulated worker runs, long prefill to lone decode, within 15% of the truth
    for prefill, batch, context in ((1536, 0, 0), (128, 0, 0), (0, 1, 64), (0, 8, 1600)):
        want = truth.step_seconds(prefill, batch, context)
        assert _close(fitted.step_seconds(prefill, batch, context), want, 0.15), (prefill, batch)
