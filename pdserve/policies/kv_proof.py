"""Proof that KV moved: did the decode workers really serve disaggregated requests from pulled KV?

A P/D stack with a broken connector still answers every request: the decode worker silently
recomputes the prompt (vLLM's `kv_load_failure_policy: recompute`, or a decode worker started
without the connector at all), so the hop costs a prefill twice and the service looks healthy
(KServe #5987). The gateway knows which disaggregated requests reached their first token on
which decode replica, and after which prefill replica; the decode worker counts the prompt
tokens whose KV arrived from a peer (`vllm:prompt_tokens_by_source_total{source=
"external_kv_transfer"}`, plus `local_cache_hit` for a prefix it already held). This policy
compares the two per decode replica and per span between judgements, and names the replica at
fault with the reason. Pure: spans and the clock in, faults out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

KvFaultReason = Literal["pull_failed", "not_pulled", "no_metric"]
REASONS: tuple[KvFaultReason, ...] = ("pull_failed", "not_pulled", "no_metric")


@dataclass(frozen=True)
class KvProofSettings:
    min_ratio: float = 0.5  # the decode must show at least this share of the expected tokens
    min_expected_tokens: int = 64  # spans expecting fewer are not judged (too little to tell)
    quarantine_s: float = 30.0  # a faulted replica serves nothing for this long, then is retried


@dataclass(frozen=True)
class PullSpan:
    """One decode replica between two judgements."""

    decode: str
    expected_tokens: int  # sum of (prompt - 1) over its disaggregated requests in the span
    by_prefill: Mapping[str, int]  # the same, by the prefill replica that computed them
    credit_tokens: float | None  # pulled or cached prompt tokens it counted and no span used yet
    failed_pulls: float = 0.0  # growth of `vllm:nixl_num_failed_transfers_total` meanwhile


@dataclass(frozen=True)
class KvFault:
    replica: str
    role: Literal["prefill", "decode"]
    reason: KvFaultReason
    detail: str
    until: float  # quarantined until then


@dataclass(frozen=True)
class KvProofRound:
    faults: tuple[KvFault, ...]
    judged: tuple[str, ...]  # decode replicas whose span was judged (their expectation spent)
    credit_left: Mapping[str, float] = field(default_factory=dict)  # per judged decode


def _reason(span: PullSpan, settings: KvProofSettings) -> KvFaultReason | None:
    if span.credit_tokens is None:
        return "no_metric"
    if span.credit_tokens >= settings.min_ratio * span.expected_tokens:
        return None
    return "pull_failed" if span.failed_pulls > 0 else "not_pulled"


def _detail(span: PullSpan, reason: KvFaultReason) -> str:
    if reason == "no_metric":
        return (
            f"decode {span.decode} exports no vllm:prompt_tokens_by_source_total: "
            "no proof its KV was pulled"
        )
    what = "its pulls failed" if reason == "pull_failed" else "nothing was pulled"
    return (
        f"decode {span.decode} counted {span.credit_tokens:.0f} of {span.expected_tokens} "
        f"prompt tokens from pulled KV ({what}; the prompts were recomputed)"
    )


def judge(spans: Sequence[PullSpan], now: float, settings: KvProofSettings) -> KvProofRound:
    """Faults for the spans that show too little pulled KV. A prefill replica whose requests
    were pulled fine on another decode replica in the same round is not blamed: the decode
    replica is (its connector, not the prefill's blocks). `no_metric` names the decode
    replica and proves nothing either way."""
    judged = [s for s in spans if s.expected_tokens >= settings.min_expected_tokens]
    reasons = {s.decode: _reason(s, settings) for s in judged}
    proven = {p for s in judged if reasons[s.decode] is None for p in s.by_prefill}
    faults: dict[str, KvFault] = {}
    until = now + settings.quarantine_s
    for span in judged:
        reason = reasons[span.decode]
        if reason is None:
            continue
        detail = _detail(span, reason)
        culprits = [p for p in span.by_prefill if p not in proven]
        if reason == "no_metric" or not culprits:
            faults.setdefault(span.decode, KvFault(span.decode, "decode", reason, detail, until))
            continue
        for prefill in culprits:
            faults.setdefault(prefill, KvFault(prefill, "prefill", reason, detail, until))
    credit = {
        s.decode: max(0.0, (s.credit_tokens or 0.0) - s.expected_tokens)
        if reasons[s.decode] is None
        else 0.0
        for s in judged
    }
    return KvProofRound(tuple(faults.values()), tuple(s.decode for s in judged), credit)
