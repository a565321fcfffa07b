"""The cluster simulator's invariants: every request finishes or is counted as dropped, cost is
replica-seconds x price, the timing follows the roofline tables, and the policies it runs are
pdserve's own."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.clustersim import events as engine
from bench.clustersim import scalers, scenarios
from bench.clustersim.events import ColdStart, SimConfig, simulate
from bench.clustersim.results import cost_usd, gpu_seconds, summarize
from bench.clustersim.scalers import HpaScaler, PdserveScaler, StaticScaler, qps_scaler
from bench.workload import Requests
from pdserve import profile
from pdserve.policies import autoscaling, picking, routing
from pdserve.workers.sim import roofline as hardware

pytestmark = pytest.mark.unit

PROFILES = Path(__file__).resolve().parents[2] / "bench" / "profiles"
MODEL = hardware.LLAMA_8B


def _disagg(**routing_updates: object) -> profile.Profile:
    prof = profile.load(str(PROFILES / "sim-a100-l4.yaml"))
    if routing_updates:
        prof = prof.model_copy(update={"routing": prof.routing.model_copy(update=routing_updates)})
    return prof


def _requests(arrival: list[float], prompt: list[int], output: list[int]) -> Requests:
    n = len(arrival)
    return Requests(
        np.array(arrival),
        np.array(prompt),
        np.array(output),
        np.zeros(n, dtype=np.int64),
        ("chat",),
    )


def _ends(result: engine.SimResult) -> tuple[np.ndarray, np.ndarray]:
    return np.array(result.ledger.first_token), np.array(result.ledger.finish)


@pytest.mark.parametrize("scaler_name", ["pdserve", "pdserve-before", "hpa", "qps", "static"])
def test_every_request_finishes_or_is_dropped(scaler_name: str) -> None:
    prof = _disagg()
    tight = prof.gateway.model_copy(update={"max_queued_per_pool": 50, "queue_timeout_s": 30})
    prof = prof.model_copy(update={"gateway": tight})
    requests = scenarios.build("burst", 4.0, 600.0, seed=3)
    scaler = {
        "pdserve": PdserveScaler(),
        "pdserve-before": PdserveScaler(),
        "hpa": HpaScaler(),
        "qps": qps_scaler({"prefill": 2.0, "decode": 1.0}),
        "static": StaticScaler({"prefill": 1, "decode": 1}),
    }[scaler_name]
    late = scaler_name != "pdserve-before"  # the gateway before issue 18 as well
    config = SimConfig(prof, MODEL, ColdStart(provision_s=30), tail_s=120, late_binding=late)
    result = simulate(config, requests, scaler)
    first, finish = _ends(result)
    dropped = np.array([d is not None for d in result.ledger.dropped])
    finished = ~np.isnan(finish)
    assert np.all(finished ^ dropped)  # exactly one of the two, for every request
    assert result.ledger.done == len(requests)
    assert np.all(first[finished] >= requests.arrival[finished] - 1e-9)
    assert np.all(finish[finished] >= first[finished] - 1e-9)
    summary = summarize(result, 2.0, 0.15)
    assert summary["finished"] + summary["dropped"] == len(requests)
    if scaler_name == "static":  # one L4 cannot carry a 40 req/s burst: the gateway sheds
        assert summary["dropped"] > 0


def test_cost_is_replica_seconds_times_price() -> None:
    requests = scenarios.build("steady", 2.0, 300.0, seed=1)
    result = simulate(
        SimConfig(_disagg(), MODEL), requests, StaticScaler({"prefill": 2, "decode": 3})
    )
    # 2 A100 x $5.07/h + 3 L4 x $0.71/h, every replica up from t=0 to the horizon
    per_hour = 2 * hardware.A100_80GB.price_per_hour + 3 * hardware.L4.price_per_hour
    # the profile starts 1 + 4; static scaling launched a prefill and removed a decode at t=0
    assert len(result.lives) == 6
    expected = sum(
        life.seconds(result.horizon_s) * life.price_per_hour / 3600 for life in result.lives
    )
    assert cost_usd(result) == pytest.approx(expected)
    assert gpu_seconds(result) == pytest.approx(
        sum(lf.seconds(result.horizon_s) for lf in result.lives)
    )
    # the replica launched at t=0 by the scaler and the ones removed at t=0 bill nothing extra
    removed = [life for life in result.lives if life.removed_at is not None]
    assert all(life.seconds(result.horizon_s) < 2.0 for life in removed)
    assert cost_usd(result) == pytest.approx(per_hour * result.horizon_s / 3600, rel=0.01)


def test_cost_matches_the_replica_timeline_under_autoscaling() -> None:
    requests = scenarios.build("burst", 3.0, 900.0, seed=2)
    result = simulate(
        SimConfig(_disagg(), MODEL, ColdStart(provision_s=20)), requests, PdserveScaler()
    )
    prices = {"prefill": hardware.A100_80GB.price_per_hour, "decode": hardware.L4.price_per_hour}
    # integrate (ready + starting + draining) x price over the 1 s ticks
    integrated = sum((r + s + d) * prices[pool] / 3600 for _, pool, r, s, d in result.timeline.rows)
    assert len(result.lives) > 5  # it did scale
    assert cost_usd(result) == pytest.approx(integrated, rel=0.03)


def test_one_request_follows_the_roofline_model() -> None:
    # 2,000 tokens >= threshold 512 on an idle cluster: A100 prefill, KV hop, L4 decode
    requests = _requests([1.0], [2000], [10])
    result = simulate(
        SimConfig(_disagg(), MODEL), requests, StaticScaler({"prefill": 1, "decode": 4})
    )
    first, finish = _ends(result)
    prefill_s = hardware.prefill_step_seconds(hardware.A100_80GB, MODEL, 2000)
    hop_s = hardware.kv_transfer_seconds(
        hardware.A100_80GB, hardware.L4, 2000 * MODEL.kv_bytes_per_token
    )
    step_s = hardware.decode_step_seconds(hardware.L4, MODEL, 1, 2000)
    assert result.ledger.route_disagg == [True]
    # decode steps are memoised with the context to 4 significant bits: within 0.2% here
    assert first[0] - 1.0 == pytest.approx(prefill_s + hop_s + step_s, rel=2e-3)
    # 10 tokens: one per step; the context grows by a token a step, so allow 1%
    assert finish[0] - 1.0 - prefill_s - hop_s == pytest.approx(10 * step_s, rel=0.01)


def test_a_local_prefill_stalls_running_decodes() -> None:
    # a long generation is decoding when a 4,000-token prompt arrives under standard routing
    prof = profile.load(str(PROFILES / "sim-a100-unified.yaml"))
    requests = _requests([0.0, 1.0], [100, 4000], [500, 5])
    result = simulate(SimConfig(prof, MODEL), requests, StaticScaler({"decode": 1}))
    stall = hardware.step_seconds(
        hardware.A100_80GB, MODEL, prefill_tokens=4000, decode_batch=1, decode_context_tokens=200
    )
    plain = hardware.decode_step_seconds(hardware.A100_80GB, MODEL, 1, 200)
    longest = max(10 ** ((k + 1) / 50) for k in result.ledger.itl_hist)
    assert stall > 5 * plain
    assert longest >= stall * 0.95  # one inter-token gap as long as the prefill step
    assert result.ledger.route_disagg == [False, False]


def test_the_simulator_runs_pdserves_own_policies() -> None:
    assert engine.decide_route is routing.decide_route
    assert engine.pick is picking.pick
    assert scalers.decide is autoscaling.decide
    scaler = PdserveScaler()
    simulate(SimConfig(_disagg(), MODEL), scenarios.build("steady", 1.0, 60.0), scaler)
    assert set(scaler.states) == {"prefill", "decode"}
    assert all(isinstance(s, autoscaling.AutoscaleState) for s in scaler.states.values())


@pytest.mark.parametrize(("threshold", "expected_share"), [(100_000, 0.0), (0, 1.0)])
def test_the_profile_routing_threshold_drives_the_route(
    threshold: int, expected_share: float
) -> None:
    # pdserve's decide_route: below the threshold every prompt prefills locally
    requests = scenarios.build("steady", 1.0, 120.0, seed=4)
    result = simulate(
        SimConfig(_disagg(prefill_threshold=threshold, ttft_budget_s=1e6), MODEL),
        requests,
        StaticScaler({"prefill": 2, "decode": 2}),
    )
    assert np.mean(result.ledger.route_disagg) == pytest.approx(expected_share)


def test_pdserve_scales_decode_up_for_a_burst_and_back_down() -> None:
    requests = scenarios.build("burst", 3.0, 1200.0, seed=5)
    result = simulate(
        SimConfig(_disagg(), MODEL, ColdStart(provision_s=20)), requests, PdserveScaler()
    )
    decode = [(t, r + s) for t, pool, r, s, _ in result.timeline.rows if pool == "decode"]
    before = max(n for t, n in decode if t < 390)
    during = max(n for t, n in decode if 400 <= t < 600)
    after = decode[-1][1]
    assert during > 2 * before
    assert after < during
    assert not math.isnan(summarize(result, 2.0, 0.15)["ttft_p99_s"])


def test_an_overloaded_prefill_pool_overflows_locally_only_while_that_is_faster() -> None:
    # 12 long prompts at once, a near-zero TTFT budget: the budget-only rule would prefill the
    # 11 behind the first on the 2 decode replicas; pdserve's rule sends a prompt there only
    # while their own prefill queue would give it an earlier first token
    n = 12
    requests = _requests([i * 0.001 for i in range(n)], [8000] * n, [16] * n)
    result = simulate(
        SimConfig(_disagg(ttft_budget_s=0.001), MODEL),
        requests,
        StaticScaler({"prefill": 1, "decode": 2}),
    )
    local = n - sum(result.ledger.route_disagg)
    assert 0 < local < n - 1, result.ledger.route_disagg
    assert result.ledger.done == n
    assert result.ledger.local_prefill_tokens == 0  # every local prefill finished
