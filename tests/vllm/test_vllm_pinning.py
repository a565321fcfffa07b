"""Two CPU workers given cores 0 and 1: every thread of each worker's tree on its own core."""

from __future__ import annotations

import time

import pytest

from pdserve.workers.pinning import tree_affinity

pytestmark = pytest.mark.vllm


def test_every_thread_of_each_worker_is_on_its_own_core(cluster) -> None:
    workers = cluster.require("prefill", "decode")
    time.sleep(3)  # past one re-pin period after the workers became ready
    for name, core in (("prefill", 0), ("decode", 1)):
        worker = workers[name]
        tree = worker.tree()
        # pdserve worker, the API server, the engine core, the model worker (+ helpers)
        assert len(tree) >= 4, f"{name}: {tree}"
        affinity = tree_affinity(worker.process.pid)
        assert len(affinity) > 20, f"{name}: only {len(affinity)} threads found"
        off_core = {key: cores for key, cores in affinity.items() if cores != {core}}
        assert not off_core, f"{name} threads not on core {core}: {off_core}"
