"""The local actuator's core assignment across pools."""

from __future__ import annotations

import pytest

from pdserve.actuators.local import LocalActuator
from pdserve.profile import Profile

pytestmark = pytest.mark.integration  # real `pdserve worker` processes


async def test_local_actuator_spreads_cores_across_pools() -> None:
    profile = Profile.model_validate(
        {
            "name": "cores",
            "engine": {"kind": "sim"},
            "pools": {
                "prefill": {"role": "prefill", "cores": [0]},
                "decode": {"role": "decode", "cores": [1, 0], "replicas": {"max": 3}},
            },
        }
    )
    actuator = LocalActuator(lambda: profile, stop_timeout_s=5)
    try:
        # `pdserve worker` processes: they start and wait; only their cores matter here
        await actuator.scale("prefill", 1, [])
        await actuator.scale("decode", 3, [])
        cores = {
            pool: sorted(r.core for r in actuator._replicas[pool].values() if r.core is not None)
            for pool in ("prefill", "decode")
        }
        # prefill takes 0; decode: 1 (free), then 0 (1 each), then 1 (list order on a tie)
        assert cores == {"prefill": [0], "decode": [0, 1, 1]}
    finally:
        await actuator.close()
    assert not actuator.pids()
