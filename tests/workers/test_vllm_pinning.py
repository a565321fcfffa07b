"""Two CPU workers given cores 0 and 1: every thread of each worker's tree on its own core."""

from __future__ import annotations

import time

import pytest

from pdserve.workers.pinning import DEMOTED_NICE, sample_threads, tree_affinity

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


def test_each_worker_demotes_the_busy_polling_nixl_progress_thread(cluster) -> None:
    """NIXL's agent progress thread polls without sleeping; the launcher gives it the lowest
    weight, so a forward pass on the same core gets (nearly) all of it."""
    workers = cluster.require("prefill", "decode")
    time.sleep(6)  # idle past two demotion checks
    for name in ("prefill", "decode"):
        worker = workers[name]
        threads = sample_threads(worker.process.pid)
        demoted = [key for key in threads if nice_of(*key) == DEMOTED_NICE]
        assert demoted, f"{name}: no demoted thread; log:\n{worker.log_tail()}"
        assert "busy-polls: given the lowest weight" in worker.log_path.read_text()
        for pid, tid in demoted:
            assert tid != pid, f"{name}: a main thread was demoted"


def nice_of(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[16])
    except FileNotFoundError:
        return 0
