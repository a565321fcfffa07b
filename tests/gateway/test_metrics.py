"""The gateway's /metrics: the pool gauges come from the pools that exist when it is read."""

from __future__ import annotations

import pytest

from pdserve.gateway.metrics import GatewayMetrics
from pdserve.pools.pool import Pool
from pdserve.pools.snapshot import PoolSnapshot
from pdserve.pools.views import PoolView, pool_view
from tests.support.gateway import gateway_profile, running_app, until

POOL_GAUGES = (
    "pdserve_pool_queue_depth",
    "pdserve_pool_concurrency",
    "pdserve_pool_replicas",
    "pdserve_pool_queued_prompt_tokens",
    "pdserve_pool_desired_replicas",
)


class FakePools:
    """A pool source: real pools, snapshots with the numbers a test sets."""

    def __init__(self, names: list[str]) -> None:
        profile = gateway_profile("gw-switch-disaggregated")
        self.pools = {name: Pool(name, profile.pools[name], "key", 8) for name in names}
        self.snapshots_at: list[float] = []

    def pool_views(self, now: float) -> list[PoolView]:
        self.snapshots_at.append(now)
        # concurrency = 2 queued + max(1 in flight, 3 running + 4 waiting) = 9
        return [
            pool_view(pool, PoolSnapshot(name, now, 1, 0, 0, 2, 120, 3, 4, 1, 0.0), True)
            for name, pool in self.pools.items()
        ]


def _pool_lines(text: str, pool: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(POOL_GAUGES) and f'pool="{pool}"' in line
    ]


@pytest.mark.unit
def test_the_gauges_follow_the_pools_at_each_scrape() -> None:
    source = FakePools(["prefill", "decode"])
    metrics = GatewayMetrics()
    metrics.export_pools(source, clock=lambda: 42.0)
    text = metrics.render().decode()
    assert "# TYPE pdserve_pool_queue_depth gauge" in text
    for line in (
        'pdserve_pool_queue_depth{pool="prefill"} 2.0',
        'pdserve_pool_concurrency{pool="decode"} 9.0',
        'pdserve_pool_queued_prompt_tokens{pool="decode"} 120.0',
        'pdserve_pool_desired_replicas{pool="prefill"} 1.0',
        'pdserve_pool_replicas{pool="decode",state="starting"} 0.0',
    ):
        assert line in text.splitlines(), line
    assert len(_pool_lines(text, "prefill")) == 4 + 4  # four gauges + one per replica state
    assert source.snapshots_at == [42.0]  # the clock is read at the scrape
    del source.pools["prefill"]
    text = metrics.render().decode()
    assert _pool_lines(text, "prefill") == []
    assert len(_pool_lines(text, "decode")) == 8


@pytest.mark.unit
def test_a_second_pool_source_is_refused() -> None:
    metrics = GatewayMetrics()
    metrics.export_pools(FakePools(["decode"]))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.export_pools(FakePools(["decode"]))


@pytest.mark.integration
async def test_a_pool_a_switch_drops_leaves_metrics() -> None:
    async with running_app("gw-switch-disaggregated") as (app, client):
        before = (await client.get("/metrics")).text
        assert 'pdserve_pool_desired_replicas{pool="prefill"} 1.0' in before
        inline = gateway_profile("gw-switch-standard").model_dump(mode="json")
        answer = await client.put("/admin/profile", json={"profile": inline})
        assert answer.status_code == 202, answer.text
        manager = app.state.gateway.manager
        await until(lambda: set(manager.pools) == {"decode"}, 60)
        after = (await client.get("/metrics")).text
        assert _pool_lines(after, "prefill") == []
        assert 'pdserve_pool_desired_replicas{pool="decode"} 1.0' in after
