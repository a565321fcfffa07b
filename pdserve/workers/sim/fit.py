"""The CPU timing of the simulated worker fitted to measurements of a real vLLM worker.

A CPU's speed at serving is not a datasheet number: the same tiny model ran 3-5x slower on an
AVX2-only AMD EPYC than on an AVX-512 Xeon. So the `cpu` accelerator's effective parameters are
solved from the worker's own timings on the machine that runs it:

    TTFT(prompt n)            = request + step + 1 x per_seq + max(F(n) / flops, B(n) / bw)
    ITL(batch k, context ctx) =           step + k x per_seq + max(F / flops, B / bw)

with F and B the step's FLOPs and bytes from the roofline (`roofline.step_work`), `step` the
accelerator's per-step overhead and `per_seq` vLLM's per-sequence work in a step (sampling,
detokenizing, streaming: what makes a tiny model's ITL grow with the batch). Once each
measurement's binding term (compute or memory) is known the model is linear in
(1/flops, 1/bw, step, request, per_seq); the fit alternates between assigning the binding term
and a non-negative least squares on relative errors until the assignment stops changing.
The result is a timing YAML that `--timing FILE` loads (`pdserve.workers.sim.timing`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from pdserve.workers.sim import roofline

Kind = Literal["ttft", "itl"]
MAX_ROUNDS = 20


class FitError(ValueError):
    """The measurements cannot determine the timing (too few, or of the wrong kinds)."""


@dataclass(frozen=True)
class Observation:
    """One measured duration and the engine step that produced it.

    `ttft`: a prompt of `prefill_tokens` alone on an idle worker, request to first token.
    `itl`: the gap between two tokens of `decode_batch` sequences decoding together, holding
    `decode_context` KV tokens in all, with `prefill_tokens` of prompt computed in the same step.
    """

    kind: Kind
    seconds: float
    prefill_tokens: int = 0
    decode_batch: int = 0
    decode_context: int = 0


@dataclass(frozen=True)
class TimingFit:
    accelerator: roofline.Accelerator  # `cpu` with the fitted flops, mem_bw and step overhead
    request_overhead_s: float
    model: str
    observations: int
    rms_relative_error: float
    seq_overhead_s: float = 0.0  # per sequence in a step

    def to_yaml_data(self, base: str = "vllm-cpu-tiny", note: str = "") -> dict[str, Any]:
        """The timing file `load_timing` reads: the base preset with the fitted accelerator."""
        acc = self.accelerator
        return {
            "base": base,
            "name": f"{base}-fit",
            "request_overhead_s": float(self.request_overhead_s),
            "seq_overhead_s": float(self.seq_overhead_s),
            "accelerator": {
                "base": acc.name,
                "flops": float(acc.flops),
                "mem_bw": float(acc.mem_bw),
                "step_overhead_s": float(acc.step_overhead_s),
            },
            "fit": {
                "model": self.model,
                "observations": self.observations,
                "rms_relative_error": round(self.rms_relative_error, 4),
                "note": note,
            },
        }


Row = tuple[float, float, float, float]  # FLOPs, bytes, requests (0 or 1), sequences


def _row(obs: Observation, model: roofline.ModelCost) -> Row:
    if obs.kind == "ttft":
        flops, moved = roofline.step_work(model, prefill_tokens=obs.prefill_tokens)
        return flops, moved, 1.0, 1.0
    flops, moved = roofline.step_work(
        model, obs.prefill_tokens, obs.decode_batch, obs.decode_context
    )
    return flops, moved, 0.0, obs.decode_batch + (1.0 if obs.prefill_tokens > 0 else 0.0)


def _check(observations: list[Observation]) -> None:
    ttft_lengths = {o.prefill_tokens for o in observations if o.kind == "ttft"}
    itls = [o for o in observations if o.kind == "itl"]
    if len(ttft_lengths) < 2:
        raise FitError(
            f"TTFT measured at {len(ttft_lengths)} prompt length(s): the fit needs at least two "
            "different lengths to separate compute from fixed overhead"
        )
    if not itls:
        raise FitError("no inter-token latency measured: the per-step overhead is undetermined")
    bad = [o for o in observations if not (math.isfinite(o.seconds) and o.seconds > 0)]
    if bad:
        raise FitError(f"durations must be positive and finite: {bad[0]}")
    if any(o.kind == "ttft" and o.prefill_tokens <= 0 for o in observations):
        raise FitError("a TTFT observation needs prefill_tokens > 0")
    if any(o.kind == "itl" and o.decode_batch <= 0 for o in observations):
        raise FitError("an ITL observation needs decode_batch > 0")


def _nnls(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best of the unconstrained solutions over
    every subset of free coefficients (five unknowns: 31 small solves)."""
    best, best_cost = np.zeros(matrix.shape[1]), float(np.sum(target**2))
    for size in range(1, matrix.shape[1] + 1):
        for free in itertools.combinations(range(matrix.shape[1]), size):
            cols = list(free)
            if np.linalg.matrix_rank(matrix[:, cols]) < len(cols):
                continue
            coef, *_ = np.linalg.lstsq(matrix[:, cols], target, rcond=None)
            if np.any(coef < 0):
                continue
            cost = float(np.sum((matrix[:, cols] @ coef - target) ** 2))
            if cost < best_cost:
                best, best_cost = np.zeros(matrix.shape[1]), cost
                best[cols] = coef
    return best


def _design(rows: list[Row], compute_bound: list[bool], seconds: np.ndarray) -> np.ndarray:
    matrix = np.array(
        [[f if cb else 0.0, 0.0 if cb else b, 1.0, r, n]
         for (f, b, r, n), cb in zip(rows, compute_bound, strict=True)]
    )  # fmt: skip
    return matrix / seconds[:, None]  # relative errors: a 6 ms gap counts as much as a 150 ms TTFT


def solve(observations: list[Observation], model: roofline.ModelCost) -> np.ndarray:
    """(1/flops, 1/bandwidth, step_overhead_s, request_overhead_s, seq_overhead_s), all >= 0."""
    _check(observations)
    rows = [_row(o, model) for o in observations]
    seconds = np.array([o.seconds for o in observations])
    # start as the roofline expects: prefill compute-bound, decode memory-bound
    bound = [o.kind == "ttft" for o in observations]
    for _ in range(MAX_ROUNDS):
        coef = _nnls(_design(rows, bound, seconds), np.ones(len(rows)))
        again = [f * coef[0] >= b * coef[1] for f, b, _, _ in rows]
        if again == bound:
            break
        bound = again
    if coef[0] <= 0:
        raise FitError(
            "TTFT does not grow with prompt length in these measurements: no compute rate fits "
            "(measure prompts far apart, e.g. 64 and 1,536 tokens, on an idle worker)"
        )
    return coef


def medians(observations: list[Observation]) -> list[Observation]:
    """One observation per distinct step, at the median of its repeats (a load spike on a shared
    machine then moves one repeat, not the fit)."""
    groups: dict[tuple[Kind, int, int, int], list[float]] = {}
    for o in observations:
        key = (o.kind, o.prefill_tokens, o.decode_batch, o.decode_context)
        groups.setdefault(key, []).append(o.seconds)
    return [Observation(k[0], float(np.median(v)), *k[1:]) for k, v in groups.items()]


def fit_cpu(
    observations: list[Observation],
    model: roofline.ModelCost = roofline.TINY,
    base: roofline.Accelerator = roofline.CPU,
) -> TimingFit:
    """`base` with flops, mem_bw and step_overhead_s solved from `observations` (mfu = mbu = 1),
    and the request and per-sequence overheads of the timing.

    A bandwidth that never binds (decode time flat in the context length) is set to the lowest
    one at which the memory term still stays under the compute term of every measured step.
    """
    raw = len(observations)
    observations = medians(observations)
    inv_flops, inv_bw, step_overhead, request_overhead, seq_overhead = solve(observations, model)
    if inv_bw <= 0:
        inv_bw = _least_binding_inverse_bandwidth(observations, model, inv_flops)
    acc = replace(
        base,
        flops=1.0 / inv_flops,
        mem_bw=1.0 / inv_bw,
        mfu=1.0,
        mbu=1.0,
        step_overhead_s=float(step_overhead),
    )
    timing = TimingFit(acc, float(request_overhead), model.name, raw, 0.0, float(seq_overhead))
    errors = [predict(timing, o) / o.seconds - 1 for o in observations]
    return replace(timing, rms_relative_error=float(np.sqrt(np.mean(np.square(errors)))))


def _least_binding_inverse_bandwidth(
    observations: list[Observation], model: roofline.ModelCost, inv_flops: float
) -> float:
    # the memory term may reach the compute term of each step, never exceed it
    ratios = [f * inv_flops / b for f, b, _, _ in (_row(o, model) for o in observations)]
    return min(ratios)


def predict(fit: TimingFit, obs: Observation) -> float:
    """What the fitted timing says `obs` should have taken."""
    model = roofline.model_cost(fit.model)
    sequences = _row(obs, model)[3]
    if obs.kind == "ttft":
        step = roofline.step_seconds(fit.accelerator, model, prefill_tokens=obs.prefill_tokens)
        return fit.request_overhead_s + step + fit.seq_overhead_s * sequences
    step = roofline.step_seconds(
        fit.accelerator, model, obs.prefill_tokens, obs.decode_batch, obs.decode_context
    )
    return step + fit.seq_overhead_s * sequences
