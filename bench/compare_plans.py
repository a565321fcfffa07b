"""The comparison's plans: per engine, the profiles compared, the workload's shape and the
phases' length (bench.compare_profiles runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class Plan:
    """One engine's comparison: profiles, workload shape and phase length."""

    standard: str
    disaggregated: str
    always: str
    chat_streams: int
    long_prompt_tokens: int
    long_output_tokens: int
    # seconds between long prompts (the rate, the heavier rate): fixed, or these multiples of
    # the long prompt's prefill time measured at warm-up on the first stack
    intervals: tuple[float, float] | None
    phase_s: float
    ready_timeout_s: float
    slo_ttft: float
    slo_itl: float
    quick_phase_s: float
    time_scale: float = 1.0  # simulated workers run this many times faster than modelled
    interval_factors: tuple[float, float] = (1.15, 0.6)
    # a real model whose own tokenizer makes the prompts (lengths in its tokens); None: the
    # seeded byte-level models, one token a character
    tokenizer_model: str | None = None

    def tokenizer(self) -> Any:
        """The plan's tokenizers.Tokenizer, or None for the byte-level seeded models."""
        if self.tokenizer_model is None:
            return None
        from tokenizers import Tokenizer

        from pdserve.workers.checkpoint import ensure_model

        return Tokenizer.from_file(str(ensure_model(self.tokenizer_model) / "tokenizer.json"))


PLANS = {
    "vllm": Plan(
        "cpu-standard-small",
        "cpu-disaggregated-small",
        "cpu-always-disaggregated-small",
        chat_streams=4,
        long_prompt_tokens=1800,
        long_output_tokens=16,
        intervals=None,  # one prefill worker ~87% busy, then overloaded
        phase_s=120.0,
        quick_phase_s=30.0,
        ready_timeout_s=420.0,
        slo_ttft=8.0,
        slo_itl=0.2,
    ),
    # SmolLM2-135M-Instruct (`pdserve model smollm2`), its real tokenizer: on one core here an
    # 1,800-token prefill takes ~3.3 s against a 28-34 ms decode step (profiles/local.yaml)
    "smollm2": Plan(
        "cpu-standard-smollm2",
        "cpu-disaggregated-smollm2",
        "cpu-always-disaggregated-smollm2",
        chat_streams=4,
        long_prompt_tokens=1800,
        long_output_tokens=16,
        intervals=None,
        phase_s=120.0,
        quick_phase_s=30.0,
        ready_timeout_s=420.0,
        slo_ttft=4.0,
        slo_itl=0.1,
        tokenizer_model="smollm2",
    ),
    "sim": Plan(
        "sim-standard",
        "sim-disaggregated",
        "sim-always-disaggregated",
        chat_streams=16,
        long_prompt_tokens=1800,
        long_output_tokens=16,
        intervals=(0.2, 0.08),
        phase_s=60.0,
        quick_phase_s=8.0,
        ready_timeout_s=60.0,
        slo_ttft=1.0,
        slo_itl=0.05,
        time_scale=0.2,
    ),
}
