"""The gateway's ledger of disaggregated requests against the decode workers' scraped counters:
records settle after two scrapes, counter growth (and restarts) are credited, a fault takes the
prefill replica out of service with its reason until the quarantine ends."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pdserve.actuators.base import ReplicaHandle
from pdserve.policies.kv_proof import KvProofSettings
from pdserve.pools.kv_proof import KvProof
from pdserve.pools.replica import Replica, ReplicaState, parse_worker_metrics, replica_state

pytestmark = pytest.mark.unit

SETTINGS = KvProofSettings(min_ratio=0.5, min_expected_tokens=64, quarantine_s=30.0)


def replica(pool: str, rid: str) -> Replica:
    r = Replica(handle=ReplicaHandle(rid, pool, f"http://{rid}"), healthy=True, ever_healthy=True)
    return r


def metrics(external: float, cached: float = 0.0, failed: float = 0.0) -> str:
    by_source = "vllm:prompt_tokens_by_source_total"
    return (
        f'{by_source}{{engine="0",source="external_kv_transfer"}} {external}\n'
        f'{by_source}{{engine="0",source="local_cache_hit"}} {cached}\n'
        f'{by_source}{{engine="0",source="local_compute"}} 5000\n'
        f'vllm:nixl_num_failed_transfers_total{{engine="0"}} {failed}\n'
    )


class Stack:
    def __init__(self) -> None:
        self.prefill = replica("prefill", "p1")
        self.decode = replica("decode", "d1")
        self.faults: list[tuple[str, str]] = []
        pools = {
            "prefill": SimpleNamespace(name="prefill", replicas={"p1": self.prefill}),
            "decode": SimpleNamespace(name="decode", replicas={"d1": self.decode}),
        }
        self.proof = KvProof(lambda: pools, SETTINGS, lambda p, r: self.faults.append((p, r)))

    def scrape(self, text: str, now: float = 0.0) -> None:
        """One refresh round: the probes, then the proof's tick (as the pool manager runs it)."""
        self.decode.observe_metrics(parse_worker_metrics(text))
        self.proof.tick(now)


def test_the_counters_are_read_from_vllm_metrics_text() -> None:
    values = parse_worker_metrics(metrics(external=700, cached=50, failed=2))
    assert values["kv_received_tokens"] == 750  # pulled + already cached, not computed
    assert values["kv_failed_pulls"] == 2


def test_requests_whose_kv_arrived_raise_no_fault() -> None:
    s = Stack()
    s.scrape(metrics(external=0))
    s.proof.served(s.decode, "p1", 500)  # the decode pulls 499 of its 500 prompt tokens
    s.scrape(metrics(external=499))  # one scrape since: not settled, not judged
    s.scrape(metrics(external=499))
    assert s.faults == [] and replica_state(s.prefill) is ReplicaState.ready


def test_requests_recomputed_on_the_decode_take_the_prefill_replica_out_with_the_reason() -> None:
    s = Stack()
    s.scrape(metrics(external=0))
    for _ in range(3):
        s.proof.served(s.decode, "p1", 500)
    s.scrape(metrics(external=0))
    assert s.faults == []
    s.scrape(metrics(external=0), now=10.0)
    assert s.faults == [("prefill", "not_pulled")]
    assert replica_state(s.prefill) is ReplicaState.failed
    assert s.prefill.kv_fault is not None and "counted 0 of 1497" in s.prefill.kv_fault
    s.proof.tick(39.0)  # 10 + 30 s quarantine not over
    assert replica_state(s.prefill) is ReplicaState.failed
    s.proof.tick(40.0)
    assert replica_state(s.prefill) is ReplicaState.ready and s.prefill.kv_fault is None


def test_failed_pulls_are_named_as_such() -> None:
    s = Stack()
    s.scrape(metrics(external=0, failed=0))
    s.proof.served(s.decode, "p1", 500)
    s.scrape(metrics(external=0, failed=1))
    s.scrape(metrics(external=0, failed=1))
    assert s.faults == [("prefill", "pull_failed")]


def test_a_restarted_decode_worker_counting_from_zero_is_credited() -> None:
    s = Stack()
    s.scrape(metrics(external=10_000))
    s.proof.served(s.decode, "p1", 500)
    s.scrape(metrics(external=499))  # restarted (counter fell), then pulled this one
    s.scrape(metrics(external=499))
    assert s.faults == []


def test_cache_hits_of_local_requests_do_not_pile_up_to_hide_a_later_failure() -> None:
    s = Stack()
    s.scrape(metrics(external=0, cached=0))
    for cached in (5000, 10_000, 15_000):  # local-route prompts hitting its prefix cache
        s.scrape(metrics(external=0, cached=cached))
    # growth seen in the scrape just before a record may be that record's (the worker counts a
    # prompt just before its first token leaves); older growth no record claimed is dropped
    s.scrape(metrics(external=0, cached=15_000))
    s.proof.served(s.decode, "p1", 500)
    s.scrape(metrics(external=0, cached=15_000))  # the disaggregated one was recomputed
    s.scrape(metrics(external=0, cached=15_000))
    assert s.faults == [("prefill", "not_pulled")]
