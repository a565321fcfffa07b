"""The accelerator types a pool may name, and every fact pdserve keeps about each: where its
nodes are (Kubernetes), what Ray calls it, the host a replica needs beside it, and the roofline
numbers the simulator times it with.

The one table: the profile checks `accelerator` against it, `pdserve render` takes the chart's
node placement and host resources from it, the Ray actuator its resource name, and
`pdserve.workers.sim.roofline` its datasheet numbers. This module imports nothing of pdserve, so
every layer (the profile included) may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""NVIDIA GPU feature discovery's (GPU Operator's) node label naming the GPU model."""
NVIDIA_GPU_RESOURCE = "nvidia.com/gpu"
"""The NVIDIA device plugin's extended resource; its nodes carry a taint of the same key."""


@dataclass(frozen=True)
class Roofline:
    """Datasheet numbers of one device, as pdserve.workers.sim.roofline's step model reads them."""

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


@dataclass(frozen=True)
class HostShare:
    """Host CPU and memory one replica needs per tensor-parallel rank (Kubernetes requests)."""

    cpu: str
    memory_request_gib: int
    memory_limit_gib: int


@dataclass(frozen=True)
class Accelerator:
    """One accelerator type, by the name profiles use (`pools.<pool>.accelerator`)."""

    name: str
    host: HostShare
    ray_type: str | None = None  # Ray's accelerator_type resource; None: CPUs only
    product_labels: tuple[str, ...] = ()  # GPU_PRODUCT_LABEL values; any of them matches
    gpu_resource: str | None = None  # one per tensor-parallel rank; its taint is tolerated
    roofline: Roofline | None = None  # None: measured on the machine (the simulator's CPU fit)


def _nvidia(
    name: str, ray_type: str, products: tuple[str, ...], host: HostShare, **roofline: float
) -> Accelerator:
    """An NVIDIA GPU: placed by its product label, one device-plugin GPU per rank."""
    return Accelerator(
        name=name,
        host=host,
        ray_type=ray_type,
        product_labels=products,
        gpu_resource=NVIDIA_GPU_RESOURCE,
        roofline=Roofline(name=name, **roofline),
    )


# NVIDIA A100 80GB SXM: 312 TFLOP/s dense BF16, 2,039 GB/s HBM2e, 80 GB
# (NVIDIA A100 Tensor Core GPU datasheet, nvidia.com/a100, table "A100 80GB SXM").
# Price: Google Cloud a2-ultragpu-1g (1x A100 80GB), us-central1 on-demand, $5.07/h
# (cloud.google.com/compute/gpus-pricing, 2024). Link: p4de-class hosts give 4x100 Gb/s EFA for
# 8 GPUs (aws.amazon.com/ec2/instance-types/p4), i.e. 50 Gb/s = 6.25 GB/s per GPU; GPUDirect RDMA.
# MFU 0.5 / MBU 0.7: typical vLLM prefill and decode efficiencies (vLLM and SARATHI-Serve papers
# report 40-60% MFU on long prefills and 60-80% of peak bandwidth in decode).
# Host: CPUs and memory for weights staging and NIXL/UCX buffers. Ray names any A100 node "A100"
# ("NVIDIA A100-SXM4-80GB" -> "A100", ray/_private/accelerators/nvidia_gpu.py).
A100_80GB = _nvidia(
    "nvidia-a100-80gb", "A100", ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    host=HostShare(cpu="10", memory_request_gib=96, memory_limit_gib=128),
    flops=312e12, mem_bw=2039 * GB, mem_bytes=80 * GB, price_per_hour=5.07,
    mfu=0.5, mbu=0.7, link_bw=6.25 * GB, step_overhead_s=3e-3,
)  # fmt: skip

# NVIDIA L4: 121 TFLOP/s dense BF16 (242 with sparsity), 300 GB/s GDDR6, 24 GB
# (NVIDIA L4 Tensor Core GPU datasheet, nvidia.com/l4). Price: Google Cloud g2-standard-4
# (1x L4), us-central1 on-demand, $0.71/h (cloud.google.com/compute/vm-instance-pricing, 2024).
# Link: g2-standard-4 egress is 10 Gb/s = 1.25 GB/s (cloud.google.com/compute/docs/gpus, G2).
L4 = _nvidia(
    "nvidia-l4", "L4", ("NVIDIA-L4",),
    host=HostShare(cpu="6", memory_request_gib=24, memory_limit_gib=30),
    flops=121e12, mem_bw=300 * GB, mem_bytes=24 * GB, price_per_hour=0.71,
    mfu=0.5, mbu=0.7, link_bw=1.25 * GB, step_overhead_s=4e-3,
)  # fmt: skip

# NVIDIA H100 SXM5 80GB: 989 TFLOP/s dense BF16 (1,979 with sparsity), 3.35 TB/s HBM3, 80 GB
# (NVIDIA H100 Tensor Core GPU datasheet, nvidia.com/h100, "H100 SXM"). Price: AWS p5.48xlarge
# (8x H100) us-east-1 on-demand $55.04/h after the June 2025 price cut = $6.88 per GPU-hour
# (aws.amazon.com/ec2/pricing/on-demand). Link: p5 has 3,200 Gb/s EFA for 8 GPUs = 400 Gb/s =
# 50 GB/s per GPU (aws.amazon.com/ec2/instance-types/p5).
H100_80GB = _nvidia(
    "nvidia-h100-80gb", "H100", ("NVIDIA-H100-80GB-HBM3",),
    host=HostShare(cpu="12", memory_request_gib=128, memory_limit_gib=160),
    flops=989e12, mem_bw=3350 * GB, mem_bytes=80 * GB, price_per_hour=6.88,
    mfu=0.5, mbu=0.7, link_bw=50 * GB, step_overhead_s=2.5e-3,
)  # fmt: skip

# vLLM's CPU server takes ~3.4 GB with a 1 GiB KV cache. Its roofline is not a datasheet but a
# fit to the machine that runs it (pdserve.workers.sim.roofline.CPU).
CPU = Accelerator(name="cpu", host=HostShare(cpu="2", memory_request_gib=6, memory_limit_gib=8))

ACCELERATORS: dict[str, Accelerator] = {acc.name: acc for acc in (CPU, A100_80GB, L4, H100_80GB)}


def known() -> str:
    """The registry's names, for error messages."""
    return ", ".join(ACCELERATORS)


def get(name: str) -> Accelerator:
    """The accelerator named `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return ACCELERATORS[name]
    except KeyError:
        raise ValueError(f"unknown accelerator {name!r}; use one of {known()}") from None
