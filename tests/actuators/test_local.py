"""The local actuator: core assignment across pools, and a killed worker's liveness."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
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


async def test_a_killed_worker_reads_dead_before_asyncio_reaps_it() -> None:
    """The refresh round's sync must see a killed worker as dead at once: a probe that fails
    while the handle still says alive leaves the pool neither ready nor replaceable (a 503)."""
    profile = Profile.model_validate(
        {
            "name": "kill",
            "engine": {"kind": "sim"},
            "routing": {"mode": "standard"},
            "pools": {"decode": {"role": "both"}},
        }
    )
    actuator = LocalActuator(lambda: profile, stop_timeout_s=5)
    try:
        await actuator.scale("decode", 1, [])
        (replica,) = actuator._replicas["decode"].values()
        os.kill(replica.process.pid, signal.SIGKILL)
        _wait_exited(replica.process.pid)  # no await: asyncio's watcher cannot record the exit
        assert replica.process.returncode is None  # the gap this test is about
        (handle,) = await actuator.replicas("decode")
        assert not handle.alive
    finally:
        await actuator.close()


def _wait_exited(pid: int) -> None:
    """Block (not yield to the loop) until `pid` is a zombie or reaped, at most 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.05)
                continue
        return
