"""The roofline step model and the sim's timing presets: compute-bound prefill, bandwidth-bound
decode, and the interference a long prefill causes on a unified worker."""

from __future__ import annotations

import pytest

from pdserve.workers.sim import roofline as hardware
from pdserve.workers.sim.scheduler import Scheduler, Sequence
from pdserve.workers.sim.timing import PRESETS, load_timing, with_limits

pytestmark = pytest.mark.unit


def test_prefill_is_compute_bound_and_decode_bandwidth_bound_on_a100() -> None:
    acc, model = hardware.A100_80GB, hardware.LLAMA_8B
    # 2 x 8.03e9 x 2048 = 3.29e13 FLOP at 156e12 FLOP/s = 0.21 s >> 16 GB / 1.43 TB/s = 11 ms
    prefill = hardware.prefill_step_seconds(acc, model, 2048)
    assert prefill == pytest.approx(0.21 + 0.003, rel=0.1)
    # batch 8 decode: weights 16.06 GB + KV 8 x 1000 x 131 kB = 1.05 GB at 1.43 TB/s = 12 ms
    decode = hardware.decode_step_seconds(acc, model, batch=8, context_tokens=8000)
    assert decode == pytest.approx(17.06e9 / (2039e9 * 0.7) + 0.003, rel=0.02)


def test_faster_hardware_is_faster_and_l4_decode_is_slower_than_a100() -> None:
    model = hardware.LLAMA_8B
    prefill = {a.name: hardware.prefill_step_seconds(a, model, 4096) for a in
               (hardware.L4, hardware.A100_80GB, hardware.H100_80GB)}  # fmt: skip
    assert prefill["nvidia-l4"] > prefill["nvidia-a100-80gb"] > prefill["nvidia-h100-80gb"]
    l4 = hardware.decode_step_seconds(hardware.L4, model, 16, 16 * 2000)
    a100 = hardware.decode_step_seconds(hardware.A100_80GB, model, 16, 16 * 2000)
    assert l4 > 4 * a100  # 300 GB/s vs 2,039 GB/s


def test_transfer_follows_bytes_and_the_slower_link() -> None:
    assert hardware.transfer_seconds(0, 1e9) == 0.0
    assert hardware.transfer_seconds(1e9, 1e9, latency_s=0) == pytest.approx(1.0)
    assert hardware.transfer_seconds(2e9, 1e9, latency_s=0) == pytest.approx(2.0)
    # A100 -> L4: the L4 host's 1.25 GB/s bounds it
    seconds = hardware.kv_transfer_seconds(hardware.A100_80GB, hardware.L4, 1.25e9)
    assert seconds == pytest.approx(1.0, rel=1e-3)


def test_mixed_step_is_as_long_as_its_prefill() -> None:
    acc, model = hardware.A100_80GB, hardware.LLAMA_8B
    decode_only = hardware.step_seconds(acc, model, decode_batch=8, decode_context_tokens=8000)
    mixed = hardware.step_seconds(
        acc, model, prefill_tokens=4000, decode_batch=8, decode_context_tokens=8000
    )
    assert mixed > 10 * decode_only


def _virtual_itls(scheduler: Scheduler, long_prompt_at_step: int | None) -> list[float]:
    """Run the scheduler on a virtual clock; the gaps between tokens of sequence `d0`."""
    clock, last, gaps, step_no = 0.0, None, [], 0
    for i in range(4):
        scheduler.add(Sequence(f"d{i}", prompt_tokens=32, max_tokens=40))
    while (step := scheduler.schedule()) is not None:
        if step_no == long_prompt_at_step:
            scheduler.add(Sequence("long", prompt_tokens=2000, max_tokens=1))
        clock += scheduler.duration(step)
        for seq in scheduler.complete(step):
            if seq.id == "d0":
                if last is not None:
                    gaps.append(clock - last)
                last = clock
            if seq.finished:
                scheduler.remove(seq.id)
        step_no += 1
    return gaps


@pytest.mark.parametrize("preset", ["vllm-cpu-tiny", "a100", "l4"])
def test_a_long_prefill_raises_running_decodes_itl(preset: str) -> None:
    quiet = _virtual_itls(Scheduler(PRESETS[preset]), None)
    disturbed = _virtual_itls(Scheduler(PRESETS[preset]), 10)
    assert len(quiet) == len(disturbed) == 39
    assert max(disturbed) > 3 * max(quiet)
    assert sorted(disturbed)[len(disturbed) // 2] == pytest.approx(
        sorted(quiet)[len(quiet) // 2], rel=0.2
    )


def test_presets_share_hardware_parameter_sets() -> None:
    assert PRESETS["a100"].accelerator is hardware.A100_80GB
    assert PRESETS["l4"].accelerator is hardware.L4
    assert PRESETS["h100"].accelerator is hardware.H100_80GB
    assert PRESETS["vllm-cpu-tiny"].accelerator is hardware.CPU
    assert PRESETS["vllm-cpu-tiny"].model is hardware.TINY


def test_a_gpu_pool_accelerator_picks_its_preset() -> None:
    assert load_timing("a100", "nvidia-l4").accelerator is hardware.L4
    assert load_timing("vllm-cpu-tiny", "cpu").name == "vllm-cpu-tiny"


def test_timing_file_overrides_a_base_preset(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: l4\nnum_blocks: 100\nmodel: tiny\n")
    timing = load_timing(str(path))
    assert (timing.name, timing.num_blocks, timing.model) == ("mine", 100, hardware.TINY)
    assert timing.accelerator is hardware.L4


def test_unknown_timing_names_the_presets() -> None:
    with pytest.raises(ValueError, match="vllm-cpu-tiny, a100, l4, h100"):
        load_timing("b200")


def test_a_profiles_engine_limits_replace_the_presets() -> None:
    # 16 GiB / (131,072 B/token x 16 tokens per block) = 8,192 blocks
    timing = with_limits(PRESETS["l4"], kv_cache_gib=16, max_num_seqs=64)
    assert (timing.num_blocks, timing.max_num_seqs) == (8192, 64)
    assert with_limits(PRESETS["vllm-cpu-tiny"], kv_cache_gib=1).num_blocks == 2048
