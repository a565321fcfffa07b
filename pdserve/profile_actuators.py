"""A profile's actuator section: what runs the replicas (local processes, Ray, Kubernetes or a
static list of endpoints), with each kind's own settings.

Part of the profile layer (pdserve.profile re-exports every name here).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from pdserve.profile_pools import Strict


class ActuatorKind(str, Enum):
    local = "local"
    ray = "ray"
    kubernetes = "kubernetes"
    static = "static"


class StaticActuatorSpec(Strict):
    endpoints: dict[str, list[str]] = Field(
        default_factory=dict, description="Pool name -> worker base URLs."
    )


class KubernetesActuatorSpec(Strict):
    namespace: str = Field("default")
    deployment_prefix: str = Field("pdserve", description="Deployment is '<prefix>-<pool>'.")
    pool_label: str = Field("pdserve.io/pool", description="Label the pool's pods carry.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="More labels the pools' pods must carry to be this gateway's (the chart: "
        "its release's app.kubernetes.io/instance), so two releases never share pods.",
    )
    port: int = Field(8000, ge=1, le=65535, description="Worker container port.")
    gateway_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/component": "gateway"},
        description="Labels of this release's gateway pods (with `pod_labels`): the leader "
        "polls the others' held demand (GET /admin/demand), so a request held at any gateway "
        "wakes a pool at zero.",
    )
    manage_replicas: bool = Field(
        True,
        description="Patch each pool's scale subresource; false when KEDA or an operator owns the "
        "replica count (the gateway then only discovers pods).",
    )
    leader_election: bool = Field(
        True,
        description="Gateways elect one leader through a coordination.k8s.io/v1 Lease; only it "
        "runs the autoscaler and patches, the others proxy and take over when it lapses.",
    )
    lease_name: str | None = Field(None, description="The Lease; unset: '<prefix>-gateway'.")
    lease_duration_s: int = Field(
        15, ge=1, le=3600, description="A lease not renewed for this long may be taken over."
    )
    lease_retry_s: float = Field(
        2, gt=0, le=600, description="How often the leader renews and the others try."
    )


class RayActuatorSpec(Strict):
    address: str | None = Field(None, description="Ray cluster address; a local instance if unset.")
    num_cpus_per_replica: float = Field(1, gt=0)
    accelerator_as: Literal["gpu", "resource"] = Field(
        "gpu",
        description="gpu: a replica asks for num_gpus (tensor_parallel_size) and Ray's "
        "accelerator_type (A100, L4, ...); resource: for the custom resource named by the type "
        "instead, one per rank, as nodes declare it (`ray start --resources '{\"A100\": 8}'`; "
        "simulated workers on CPU nodes).",
    )


class ActuatorSpec(Strict):
    kind: ActuatorKind = Field(ActuatorKind.local)
    base_port: int = Field(8100, ge=1024, le=65000, description="Local: first worker HTTP port.")
    static: StaticActuatorSpec = Field(default_factory=StaticActuatorSpec)
    kubernetes: KubernetesActuatorSpec = Field(default_factory=KubernetesActuatorSpec)
    ray: RayActuatorSpec = Field(default_factory=RayActuatorSpec)
