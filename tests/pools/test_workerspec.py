"""The worker spec key: what makes a running worker reusable across a profile switch."""

from __future__ import annotations

import pytest

from pdserve.pools.workerspec import worker_spec_key
from tests.support.fakes import one_pool_profile

pytestmark = pytest.mark.unit


def test_worker_spec_key_ignores_scaling_but_not_role_or_engine() -> None:
    base = one_pool_profile()
    resized = base.model_copy(deep=True)
    resized.pools["decode"].replicas.max = 3
    resized.pools["decode"].scaling.target_concurrency = 2
    assert worker_spec_key(base, "decode") == worker_spec_key(resized, "decode")
    assert worker_spec_key(base, "decode") != worker_spec_key(one_pool_profile("decode"), "decode")
    assert worker_spec_key(base, "decode") != worker_spec_key(
        one_pool_profile(sim_time_scale=2.0), "decode"
    )
