"""The simulator's gateway runs pdserve's admission functions (capacity, release order, demand
accounting, cold-vs-broken, early refusal), and they change what it measures: late binding
moves a burst onto a replica that became ready, a cold prefill pool wakes on diverted prompts,
a deadline refuses what cannot start in time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.clustersim import events, gateway
from bench.clustersim.config import ColdStart, SimConfig, SimResult
from bench.clustersim.events import simulate
from bench.clustersim.scalers import PdserveScaler, StaticScaler
from bench.workload import Requests
from pdserve import profile
from pdserve.policies import admission
from pdserve.workers.sim import roofline as hardware

pytestmark = pytest.mark.unit

PROFILES = Path(__file__).resolve().parents[2] / "bench" / "profiles"
MODEL = hardware.LLAMA_8B
SHARED = [
    "replica_capacity",
    "choose_with_room",
    "target_binds",
    "release_key",
    "release_order",
    "demand_pool",
    "can_hold",
    "admission_decision",
]


def _profile(**gateway_updates: Any) -> profile.Profile:
    prof = profile.load(str(PROFILES / "sim-a100-l4.yaml"))
    return prof.model_copy(update={"gateway": prof.gateway.model_copy(update=gateway_updates)})


def _requests(arrival: list[float], prompt: list[int], output: list[int]) -> Requests:
    n = len(arrival)
    return Requests(
        np.array(arrival), np.array(prompt), np.array(output), np.zeros(n, dtype=np.int64), ("c",)
    )


def _ttft(result: SimResult) -> np.ndarray:
    return np.array(result.ledger.first_token) - result.requests.arrival


def test_the_gateway_functions_are_pdserves_own() -> None:
    for name in SHARED:
        assert getattr(gateway, name) is getattr(admission, name), name
    assert events.counted_demand is admission.counted_demand


def test_a_burst_calls_every_shared_admission_function(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        return counted

    for name in SHARED:
        monkeypatch.setattr(gateway, name, spy(name, getattr(admission, name)))
    monkeypatch.setattr(events, "counted_demand", spy("counted_demand", admission.counted_demand))
    # 600 requests at once, a quarter of them long, on 1 prefill + 4 decode replicas with a
    # 60 s deadline: replicas fill, requests are held (past the 48 s cold start of the new
    # replicas, which release them in order), demand is counted
    n = 600
    prompts = [1800 if i % 4 == 0 else 128 for i in range(n)]
    requests = _requests([1.0 + i * 0.001 for i in range(n)], prompts, [128] * n)
    config = SimConfig(_profile(start_deadline_s=60.0), MODEL, ColdStart(provision_s=10))
    simulate(config, requests, PdserveScaler())
    assert set(calls) == {*SHARED, "counted_demand"}, calls


def _burst_onto_a_starting_replica(late_binding: bool) -> SimResult:
    # one L4 ready, a second starting (the static count is 2; 10 + 30 + 8 = 48 s cold start),
    # 400 chats at t = 1 s: 64 run at a time, a round of 128 tokens takes ~13 s
    prof = profile.load(str(PROFILES / "sim-a100-l4.yaml"))
    decode = prof.pools["decode"].model_copy(
        update={"replicas": profile.Replicas(min=1, max=2, initial=1)}
    )
    prof = prof.model_copy(update={"pools": {**prof.pools, "decode": decode}})
    n = 400
    requests = _requests([1.0 + i * 0.001 for i in range(n)], [128] * n, [128] * n)
    config = SimConfig(prof, MODEL, ColdStart(provision_s=10), late_binding=late_binding)
    return simulate(config, requests, StaticScaler({"prefill": 1, "decode": 2}))


def test_late_binding_moves_held_requests_onto_the_replica_that_became_ready() -> None:
    before = _burst_onto_a_starting_replica(late_binding=False)
    after = _burst_onto_a_starting_replica(late_binding=True)
    assert before.ledger.done == after.ledger.done == 400
    assert all(d is None for d in after.ledger.dropped)
    # sent at once, all 400 queue inside the first L4 (~7 rounds) while the second idles;
    # held at the gateway, those still waiting at 49 s start on the new replica
    assert np.max(_ttft(before)) > 1.3 * np.max(_ttft(after))
    assert np.max(after.ledger.finish) < np.max(before.ledger.finish) - 10


def test_a_prefill_pool_at_zero_wakes_on_prompts_diverted_to_local_prefill() -> None:
    # min 0, start 0: every long prompt is prefilled locally while the pool is cold, and
    # counts toward its demand all the same, so the autoscaler starts a replica
    prof = profile.load(str(PROFILES / "sim-a100-l4.yaml"))
    prefill = prof.pools["prefill"].model_copy(
        update={"replicas": profile.Replicas(min=0, max=4, initial=0)}
    )
    prof = prof.model_copy(update={"pools": {**prof.pools, "prefill": prefill}})
    n = 40
    requests = _requests([1.0 + i * 5.0 for i in range(n)], [1800] * n, [16] * n)

    def prefill_replicas(late_binding: bool) -> tuple[int, float]:
        config = SimConfig(prof, MODEL, ColdStart(provision_s=10), late_binding=late_binding)
        result = simulate(config, requests, PdserveScaler())
        peak = max(r + s for _, pool, r, s, _ in result.timeline.rows if pool == "prefill")
        return peak, float(np.mean(result.ledger.route_disagg))

    assert prefill_replicas(late_binding=False) == (0, 0.0)  # before: demand 0 forever
    peak, share = prefill_replicas(late_binding=True)
    assert peak >= 1
    assert share > 0.5  # once it is up, later long prompts take the disaggregated route


def test_a_deadline_refuses_at_once_what_cannot_start_in_time() -> None:
    # 1,000 chats at once on 4 L4s (4 x 64 slots), nothing startable in time (static): the
    # ones that would wait past 2 s are refused on arrival, the rest start within it
    n = 1000
    requests = _requests([1.0 + i * 0.0001 for i in range(n)], [128] * n, [128] * n)
    config = SimConfig(_profile(start_deadline_s=2.0), MODEL)
    result = simulate(config, requests, StaticScaler({"prefill": 1, "decode": 4}))
    reasons = [d for d in result.ledger.dropped if d is not None]
    assert reasons and all(r.startswith("429") for r in reasons)
    finished = ~np.isnan(np.array(result.ledger.finish))
    assert finished.sum() >= 4 * 64
    assert np.max(_ttft(result)[finished]) <= 2.0 + 1.0  # the deadline, plus one tick
