"""Kubernetes actuator: each pool is a Deployment `<prefix>-<pool>`; scaling patches its `scale`
subresource and replicas are discovered from the pool's pods. The only module importing
`kubernetes`.

- scale: apps/v1 `PATCH .../deployments/<prefix>-<pool>/scale` with the merge patch
  `{"spec": {"replicas": n}}` (skipped when `manage_replicas` is false, e.g. KEDA owns it);
- victims: before shrinking, each victim pod gets the annotation
  `controller.kubernetes.io/pod-deletion-cost: "-2147483648"` so the ReplicaSet removes exactly
  the replicas the gateway already drained;
- replicas: core/v1 pods with label `<pool_label>=<pool>` that have an IP and are not being
  deleted; `http://<pod IP>:<port>` is the worker URL, the pod's Ready condition is copied to the
  label `pdserve.io/ready` (the gateway still probes /health itself).

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
        verbs: ["list", "patch"]

bound with a RoleBinding to the gateway's ServiceAccount. The client is synchronous; every call
runs in a worker thread so the gateway's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config

from pdserve.actuators.base import ReplicaHandle
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


class KubernetesActuator:
    def __init__(
        self,
        spec: KubernetesActuatorSpec,
        api_client: client.ApiClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._spec = spec
        self._api = api_client if api_client is not None else default_api_client()
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._clock = clock
        self._timeout = request_timeout_s
        self._since = datetime.now(timezone.utc).replace(microsecond=0)  # k8s: whole seconds

    def deployment(self, pool: str) -> str:
        return f"{self._spec.deployment_prefix}-{pool}"

    async def replicas(self, pool: str) -> list[ReplicaHandle]:
        pods = await asyncio.to_thread(
            self._core.list_namespaced_pod,
            self._spec.namespace,
            label_selector=f"{self._spec.pool_label}={pool}",
            _request_timeout=self._timeout,
        )
        handles = (self._handle(pool, pod) for pod in pods.items)
        return sorted((h for h in handles if h is not None), key=lambda h: h.id)

    async def scale(self, pool: str, desired: int, victims: list[str]) -> None:
        for victim in victims:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod,
                victim,
                self._spec.namespace,
                {"metadata": {"annotations": {DELETION_COST: VICTIM_COST}}},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout,
            )
        if not self._spec.manage_replicas:
            return
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
        age = datetime.now(timezone.utc) - created
        return self._clock() - max(0.0, age.total_seconds())
