"""The gateway's side of the proof that KV moved (`policies.kv_proof`): what it sent where, the
decode workers' scraped counters, and the faults applied to replicas.

The forwarder calls `served` when a disaggregated request reached its first token on a decode
replica; the pool manager's refresh round calls `tick` after its probes (so once per scrape,
which is how the counters' growth is followed from a replica's first round on). A record is
judged once the decode replica has been scraped twice since: the second scrape began after the
request's first token, so the worker had counted its prompt by then. Counters are read as growth
(a worker that restarts starts again from zero).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pdserve.policies.kv_proof import (
    KvFault,
    KvFaultReason,
    KvProofSettings,
    PullSpan,
    judge,
)
from pdserve.pools.pool import Pool
from pdserve.pools.replica import Replica

log = logging.getLogger(__name__)

SETTLE_SCRAPES = 2

FaultObserver = Callable[[str, KvFaultReason], None]  # (pool of the faulted replica, reason)


@dataclass
class _Record:
    scrape: int  # the decode replica's scrape count when the first token arrived
    prefill: str
    tokens: int


@dataclass
class _DecodeLedger:
    records: list[_Record] = field(default_factory=list)
    credit: float = 0.0  # counted tokens no judged span has used yet
    last_counter: float | None = None
    last_failed: float = 0.0
    failed_growth: float = 0.0
    seen_scrapes: int = -1


def _growth(before: float | None, now: float) -> float:
    if before is None:
        return 0.0
    return now - before if now >= before else now  # a restarted worker counts from zero


class KvProof:
    def __init__(
        self,
        pools: Callable[[], dict[str, Pool]],
        settings: KvProofSettings | None = None,
        on_fault: FaultObserver | None = None,
    ) -> None:
        self._pools = pools
        self.settings = settings or KvProofSettings()
        self.on_fault = on_fault
        self._ledgers: dict[str, _DecodeLedger] = {}
        self.faults: list[KvFault] = []  # every fault found, oldest first (bounded)

    def served(self, decode: Replica, prefill_id: str, prompt_tokens: int) -> None:
        """A disaggregated request's first token came from `decode`, prefilled on `prefill_id`:
        the decode worker should have pulled all but the last prompt position."""
        ledger = self._ledgers.setdefault(decode.id, _DecodeLedger())
        ledger.records.append(_Record(decode.scrapes, prefill_id, max(0, prompt_tokens - 1)))

    def _replicas(self) -> Iterator[tuple[Pool, Replica]]:
        for pool in list(self._pools().values()):
            for replica in pool.replicas.values():
                yield pool, replica

    def _observe(self, ledger: _DecodeLedger, replica: Replica) -> None:
        """Fold the scrapes since the last round into the ledger's credit."""
        if replica.scrapes == ledger.seen_scrapes:
            return
        ledger.seen_scrapes = replica.scrapes
        counter = replica.kv_received_tokens
        if counter is not None:
            growth = _growth(ledger.last_counter, counter)
            # credit no pending record can use (local-route cache hits) does not pile up to
            # hide a later failure; the latest growth stays, its record may be on its way
            pending = sum(r.tokens for r in ledger.records)
            ledger.credit = min(ledger.credit + growth, pending + growth)
            ledger.last_counter = counter
        ledger.failed_growth += _growth(ledger.last_failed, replica.kv_failed_pulls)
        ledger.last_failed = replica.kv_failed_pulls

    def _span(self, ledger: _DecodeLedger, replica: Replica) -> PullSpan | None:
        settled = [r for r in ledger.records if replica.scrapes >= r.scrape + SETTLE_SCRAPES]
        if not settled:
            return None
        by_prefill: dict[str, int] = {}
        for record in settled:
            by_prefill[record.prefill] = by_prefill.get(record.prefill, 0) + record.tokens
        credit = None if replica.kv_received_tokens is None else ledger.credit
        return PullSpan(
            replica.id, sum(by_prefill.values()), by_prefill, credit, ledger.failed_growth
        )

    def tick(self, now: float) -> None:
        """Judge what has settled, apply new faults, lift the quarantines that are over."""
        replicas = {r.id: (p, r) for p, r in self._replicas()}
        for gone in [rid for rid in self._ledgers if rid not in replicas]:
            del self._ledgers[gone]
        spans = []
        for rid, (_, replica) in replicas.items():  # every replica: its counters' baseline
            ledger = self._ledgers.setdefault(rid, _DecodeLedger())
            self._observe(ledger, replica)
            span = self._span(ledger, replica)
            if span is not None:
                spans.append(span)
        verdict = judge(spans, now, self.settings)
        for rid in verdict.judged:
            ledger = self._ledgers[rid]
            scrapes = replicas[rid][1].scrapes
            ledger.records = [r for r in ledger.records if scrapes < r.scrape + SETTLE_SCRAPES]
            ledger.credit = verdict.credit_left.get(rid, 0.0)
            ledger.failed_growth = 0.0
        for fault in verdict.faults:
            if fault.replica in replicas:
                self._apply(*replicas[fault.replica], fault)
        for _, replica in replicas.values():
            if replica.kv_fault is not None and now >= replica.kv_fault_until:
                log.info("replica %s: KV quarantine over, serving again", replica.id)
                replica.kv_fault, replica.kv_fault_until = None, 0.0

    def _apply(self, pool: Pool, replica: Replica, fault: KvFault) -> None:
        log.warning(
            "KV did not move (%s): %s; %s replica %s serves nothing for %.0f s",
            fault.reason,
            fault.detail,
            fault.role,
            replica.id,
            self.settings.quarantine_s,
        )
        if fault.reason != "no_metric":
            replica.kv_fault = f"{fault.reason}: {fault.detail}"
            replica.kv_fault_until = fault.until
        self.faults = [*self.faults[-63:], fault]
        if self.on_fault is not None:
            self.on_fault(pool.name, fault.reason)
