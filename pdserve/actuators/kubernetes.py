"""Kubernetes actuator: each pool is a Deployment `<prefix>-<pool>`; scaling patches its `scale`
subresource and replicas are discovered from the pool's pods. The only module importing
`kubernetes`.

- scale: apps/v1 `PATCH .../deployments/<prefix>-<pool>/scale` with the merge patch
  `{"spec": {"replicas": n}}` (skipped when `manage_replicas` is false, e.g. KEDA owns it);
- victims: before shrinking, each victim pod gets the annotation
  `controller.kubernetes.io/pod-deletion-cost: "-2147483648"` so the ReplicaSet removes exactly
  the replicas the gateway already drained;
- replicas: core/v1 pods with label `<pool_label>=<pool>` (and `pod_labels`, e.g. the Helm
  release's instance) that have an IP and are not being deleted, from one LIST and then a WATCH
  (kubernetes_watch.py); `http://<pod IP>:<port>` is the worker URL, the pod's Ready condition is
  copied to the label `pdserve.io/ready` (the gateway still probes /health itself);
- leadership: with `leader_election` the gateways elect one through a coordination.k8s.io/v1
  Lease (kubernetes_lease.py); only the leader patches anything. `scale` on a follower does
  nothing: the cluster's count is the leader's, and a restarting gateway never resets it;
- peers: the release's other gateway pods (`gateway_labels` and `pod_labels`), from a second
  LIST and WATCH, so the leader can poll the demand they hold (pools/peers.py).

Minimal RBAC for the gateway's service account, in the pools' namespace:

    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: pdserve-gateway}
    rules:
      - apiGroups: ["apps"]
        resources: ["deployments/scale"]
        verbs: ["get", "patch"]
      - apiGroups: [""]
        resources: ["pods"]
        verbs: ["list", "watch", "patch"]
      - apiGroups: ["coordination.k8s.io"]
        resources: ["leases"]
        verbs: ["create", "get", "update"]   # get/update may name the lease (resourceNames)

bound with a RoleBinding to the gateway's ServiceAccount. The client is synchronous; every call
runs in a worker thread so the gateway's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config

from pdserve.actuators.base import ReplicaHandle
from pdserve.actuators.kubernetes_lease import LeaseConfig, LeaseElector
from pdserve.actuators.kubernetes_watch import PodCache
from pdserve.profile import KubernetesActuatorSpec

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
VICTIM_COST = str(-(2**31))  # the lowest cost: the ReplicaSet deletes these pods first
READY_LABEL = "pdserve.io/ready"
MERGE_PATCH = "application/merge-patch+json"


def default_api_client() -> client.ApiClient:
    """In-cluster service account when running in a pod, else the local kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def gateway_identity() -> str:
    """The Lease's holderIdentity: the pod's name (the chart sets POD_NAME) and this process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


class KubernetesActuator:
    def __init__(
        self,
        spec: KubernetesActuatorSpec,
        api_client: client.ApiClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout_s: float = 10.0,
        identity: str | None = None,
    ) -> None:
        self._spec = spec
        self._api = api_client if api_client is not None else default_api_client()
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._clock = clock
        self._timeout = request_timeout_s
        self._since = datetime.now(UTC).replace(microsecond=0)  # k8s: whole seconds
        self._pods = PodCache(self._core, spec.namespace, self.selector(), request_timeout_s)
        self._gateways = PodCache(
            self._core, spec.namespace, self.gateway_selector(), request_timeout_s
        )
        self._pod_name = os.environ.get("POD_NAME") or socket.gethostname()
        self.elector: LeaseElector | None = None
        if spec.leader_election:
            lease = LeaseConfig(
                namespace=spec.namespace,
                name=spec.lease_name or f"{spec.deployment_prefix}-gateway",
                identity=identity or gateway_identity(),
                duration_s=spec.lease_duration_s,
                retry_s=spec.lease_retry_s,
                request_timeout_s=request_timeout_s,
            )
            self.elector = LeaseElector(self._api, lease, clock)

    def deployment(self, pool: str) -> str:
        return f"{self._spec.deployment_prefix}-{pool}"

    def selector(self) -> str:
        """Every pool's pods (the pool label present) of this gateway's release."""
        terms = [self._spec.pool_label, *(f"{k}={v}" for k, v in self._spec.pod_labels.items())]
        return ",".join(terms)

    def gateway_selector(self) -> str:
        labels = {**self._spec.gateway_labels, **self._spec.pod_labels}
        return ",".join(f"{k}={v}" for k, v in labels.items())

    async def peer_gateways(self, port: int) -> list[str]:
        """The other gateways of this release that can answer: `http://<pod IP>:<port>` of
        every gateway pod but this one that has an IP and is not being deleted."""
        self._gateways.start()
        if not await asyncio.to_thread(self._gateways.wait_synced, self._timeout):
            return []
        return sorted(
            f"http://{pod.status.pod_ip}:{port}"
            for pod in self._gateways.pods()
            if pod.metadata.name != self._pod_name
            and pod.metadata.deletion_timestamp is None
            and pod.status is not None
            and pod.status.pod_ip
        )

    @property
    def leading(self) -> bool:
        """Whether this gateway may change the cluster (always, without leader election)."""
        return self.elector is None or self.elector.leading

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[LeaseElector | None]:
        """Campaign for the Lease while open (the gateway opens it once its pools started)."""
        if self.elector is None:
            yield None
            return
        async with self.elector.running() as elector:
            yield elector

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        self._pods.start()
        if not await asyncio.to_thread(self._pods.wait_synced, self._timeout):
            raise TimeoutError(f"no pod list from the API server within {self._timeout} s")
        pods = [
            p
            for p in self._pods.pods()
            if (p.metadata.labels or {}).get(self._spec.pool_label) == pool
        ]
        handles = (self._handle(pool, pod) for pod in pods)
        return sorted((h for h in handles if h is not None), key=lambda h: h.id)

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        """The leader's: mark the drained victims, then patch the scale. A follower's, or one
        where KEDA owns the count (it picks its own victims): nothing."""
        if not self._spec.manage_replicas or not self.leading:
            return
        for victim in victims:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod,
                victim,
                self._spec.namespace,
                {"metadata": {"annotations": {DELETION_COST: VICTIM_COST}}},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            )
        await asyncio.to_thread(
            self._apps.patch_namespaced_deployment_scale,
            self.deployment(pool),
            self._spec.namespace,
            {"spec": {"replicas": desired}},
            _content_type=MERGE_PATCH,
            _request_timeout=self._timeout,
        )

    async def desired_replicas(self, pool: str) -> int:
        """The Deployment's `spec.replicas` as its scale subresource reports it."""
        scale = await asyncio.to_thread(
            self._apps.read_namespaced_deployment_scale,
            self.deployment(pool),
            self._spec.namespace,
            _request_timeout=self._timeout,
        )
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    async def close(self) -> None:
        self._pods.stop()
        self._gateways.stop()
        await asyncio.to_thread(self._api.close)

    def _handle(self, pool: str, pod: Any) -> ReplicaHandle | None:
        meta, status = pod.metadata, pod.status
        if meta.deletion_timestamp is not None or status is None or not status.pod_ip:
            return None
        if status.phase in ("Succeeded", "Failed"):
            return None
        ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
        labels = {**(meta.labels or {}), READY_LABEL: "true" if ready else "false"}
        return ReplicaHandle(
            id=meta.name,
            pool=pool,
            url=f"http://{status.pod_ip}:{self._spec.port}",
            alive=True,
            started_at=self._monotonic(meta.creation_timestamp),
            labels=labels,
        )

    def _monotonic(self, created: datetime | None) -> float:
        """A pod's creation time on this actuator's clock (its wall-clock age subtracted from
        now); 0.0 (unknown) for pods older than this actuator, whose start it did not see."""
        if created is None or created < self._since:
            return 0.0
        age = datetime.now(UTC) - created
        return self._clock() - max(0.0, age.total_seconds())
