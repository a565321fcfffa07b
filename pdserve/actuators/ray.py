"""Ray actuator: each replica is a Ray actor that runs one `pdserve worker` process on its node
and reports the URL it serves on. The only module importing `ray`.

A pool asks Ray for its accelerator through Ray's accelerator-type resources: a pool with
`accelerator: nvidia-a100-80gb` and `tensor_parallel_size: 2` becomes an actor with
`num_gpus=2, accelerator_type="A100"`, i.e. the custom resource `accelerator_type:A100` that Ray
puts on A100 nodes, so it lands on an A100 node and nowhere else; a CPU pool asks for
`num_cpus` only. With `actuator.ray.accelerator_as: resource` the actor asks instead for the
custom resource named by the type (`{"A100": 2}`), which nodes declare themselves (`ray start
--resources '{"A100": 8}'`): CPU nodes standing in for GPU ones (simulated workers), or clusters
that name their accelerators so. Each replica reports the Ray node it landed on (label
`pdserve.io/ray-node`). An actor that cannot be placed yet (no such node, or the cluster is growing)
is counted by `scale` but not listed by `replicas` until it reports its URL.

Stopping a replica asks its actor to stop the worker's process group (SIGTERM, then SIGKILL
after a bound) before the actor itself is killed, so no worker outlives its actor's stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from pdserve import accelerators
from pdserve.actuators.base import LaunchingActuator, ReplicaHandle
from pdserve.actuators.local import worker_command
from pdserve.pools.workerspec import SPEC_LABEL, worker_spec_key
from pdserve.processes import KILL_WAIT_S, free_port, stop_tree
from pdserve.profile import PoolSpec, Profile, RayActuatorSpec

STOP_TIMEOUT_S = 10.0
ACTOR_LABEL = "pdserve.io/ray-actor"
NODE_LABEL = "pdserve.io/ray-node"


def ray_accelerator_type(accelerator: str) -> str | None:
    """Ray's accelerator type for a pool's accelerator, from the registry: `nvidia-a100-80gb`
    -> `A100`, `nvidia-l4` -> `L4`, `cpu` -> None (CPUs only)."""
    return accelerators.get(accelerator).ray_type


def actor_options(pool: PoolSpec, ray_spec: RayActuatorSpec) -> dict[str, Any]:
    """The `.options(...)` of one replica's actor: CPUs, GPUs and accelerator type."""
    options: dict[str, Any] = {"num_cpus": ray_spec.num_cpus_per_replica}
    accelerator_type = ray_accelerator_type(pool.accelerator)
    if accelerator_type is None:
        return options
    if ray_spec.accelerator_as == "resource":
        options["resources"] = {accelerator_type: pool.tensor_parallel_size}
    else:
        options["num_gpus"] = pool.tensor_parallel_size
        options["accelerator_type"] = accelerator_type
    return options


class WorkerProcess:
    """Runs inside a Ray actor: one `pdserve worker` process on the actor's node."""

    def __init__(self, profile_yaml: str, pool: str, host: str | None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="pdserve-ray-")
        profile_path = Path(self._dir.name) / "profile.yaml"
        profile_path.write_text(profile_yaml)
        bind = host or ray.util.get_node_ip_address()
        port = free_port(bind)
        command = worker_command(profile_path, pool, port, free_port(bind), core=None)
        command += ["--host", bind]
        self._log = Path(self._dir.name) / "worker.log"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # one group to stop; the actor's session (see actuators.local)
            )
        self._url = f"http://{bind}:{port}"

    def placement(self) -> tuple[str, str, str]:
        """The URL it serves on, this actor's id and its node's (hex), once Ray placed it."""
        context = ray.get_runtime_context()
        return self._url, str(context.get_actor_id()), str(context.get_node_id())

    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self._log.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float) -> int | None:
        code = stop_tree(self._process.pid, timeout_s)
        returncode = self._process.poll()  # reaps it: the tree is gone or the wait ran out
        return code if returncode is None else returncode


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """ray.init replaces the SIGTERM handler with one that exits at once; the server's own
    (uvicorn's graceful shutdown, which drains and stops the workers) must stay in charge."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


async def _placement(actor: Any) -> tuple[str, str, str]:
    url, actor_id, node_id = await actor.placement.remote()
    return str(url), str(actor_id), str(node_id)


@dataclass
class RayReplica:
    id: str
    pool: str
    actor: Any  # ray.actor.ActorHandle of WorkerProcess
    placed: asyncio.Task[tuple[str, str, str]]  # URL, actor and node ids, once placed
    started_at: float
    labels: dict[str, str]


class RayActuator(LaunchingActuator[RayReplica]):
    def __init__(
        self,
        profile: Callable[[], Profile],
        host: str | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`host` is where workers bind; unset: 127.0.0.1 when Ray runs on this machine (no
        `actuator.ray.address`), else each actor's node IP, so the gateway can reach them."""
        super().__init__(profile)
        self._host = host
        self._stop_timeout_s = stop_timeout_s
        self._clock = clock
        self._owns_ray = False
        self._ids = itertools.count(1)

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        address = self._profile().actuator.ray.address
        with _keep_signal_handlers():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._owns_ray = True

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        handles = []
        for replica in list(self._replicas.get(pool, {}).values()):
            if not replica.placed.done() or replica.placed.cancelled():
                continue  # not placed yet
            if replica.placed.exception() is not None:
                handles.append(self._handle(replica, "", alive=False))
                continue
            url, actor_id, node_id = replica.placed.result()
            alive = await self._alive(replica)
            labels = {ACTOR_LABEL: actor_id, NODE_LABEL: node_id}
            handles.append(self._handle(replica, url, alive, labels))
        return handles

    async def close(self) -> None:
        await self.stop_all()
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False

    def pending(self, pool: str) -> int:
        """Replicas asked for whose actor Ray has not placed (or started) yet."""
        return sum(not r.placed.done() for r in self._replicas.get(pool, {}).values())

    async def pids(self) -> list[int]:
        """Worker process ids of the placed replicas (on their nodes)."""
        placed = [r for m in self._replicas.values() for r in m.values() if r.placed.done()]
        return list(await asyncio.gather(*(r.actor.pid.remote() for r in placed)))

    async def _launch(self, pool: str) -> RayReplica:
        self._ensure_ray()  # once, on the loop's thread: ray.init installs signal handlers
        actor, labels = await asyncio.to_thread(self._create_actor, pool)
        replica_id = f"{pool}-ray-{next(self._ids)}"
        placed = asyncio.create_task(_placement(actor), name=f"pdserve-ray-url-{replica_id}")
        return RayReplica(replica_id, pool, actor, placed, self._clock(), labels)

    def _create_actor(self, pool: str) -> tuple[Any, dict[str, str]]:
        profile = self._profile()
        text = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
        options = actor_options(profile.pools[pool], profile.actuator.ray)
        actor: Any = (
            ray.remote(WorkerProcess)
            .options(max_restarts=0, **options)
            .remote(text, pool, self._bind_host(profile))
        )
        return actor, {SPEC_LABEL: worker_spec_key(profile, pool)}

    def _bind_host(self, profile: Profile) -> str | None:
        if self._host is not None:
            return self._host
        return "127.0.0.1" if profile.actuator.ray.address is None else None

    async def _alive(self, replica: RayReplica) -> bool:
        try:
            return bool(await asyncio.wait_for(replica.actor.alive.remote(), 5.0))
        except (ray.exceptions.RayError, TimeoutError):
            return False

    async def _stop(self, replica: RayReplica) -> None:
        placed = replica.placed.done()
        replica.placed.cancel()
        # an actor still waiting for a node gets a short bound: it may be placed right now
        bound = self._stop_timeout_s + KILL_WAIT_S + 5 if placed else 1.0
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            await asyncio.wait_for(replica.actor.stop.remote(self._stop_timeout_s), bound)
        ray.kill(replica.actor, no_restart=True)

    def _handle(
        self, replica: RayReplica, url: str, alive: bool, labels: dict[str, str] | None = None
    ) -> ReplicaHandle:
        labels = {**replica.labels, **(labels or {})}
        return ReplicaHandle(replica.id, replica.pool, url, alive, replica.started_at, labels)
