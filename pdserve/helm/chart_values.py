"""The chart's Kubernetes keys as pydantic models (pdserve.helm.values composes them into
HelmValues, and re-exports them): images, accelerators, the model cache and the checkpoints
seeded into it, the vLLM containers' ports, the gateway Deployment, the autoscaling mode, and the
optional HTTPRoute, ServiceMonitor, dashboard and PodMonitors. camelCase, as Helm charts spell
them; the serving keys reuse the profile's models instead (see pdserve.helm.values).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, WithJsonSchema

from pdserve.helm.pod_values import (
    ChartStrict,
    K8sObject,
    LeaderElection,
    PodSettings,
    RouteTimeouts,
    Secret,
    rolling_update,
)
from pdserve.workers.checkpoint import SEEDED_MODELS

ModelT = TypeVar("ModelT", bound=BaseModel)


def empty(model: type[ModelT]) -> Callable[[], ModelT]:
    """A default factory: the model with every default (typed the same with or without the
    pydantic mypy plugin)."""
    return lambda: model.model_validate({})


class Image(ChartStrict):
    repository: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class Images(ChartStrict):
    gateway: Image = Field(
        default_factory=lambda: Image(repository="ghcr.io/pdserve/pdserve", tag="0.1.0"),
        description="The pdserve image: gateway, simulated workers, seeding tiny checkpoints.",
    )
    vllmCuda: Image = Field(
        default_factory=lambda: Image(repository="vllm/vllm-openai", tag="v0.32.0"),
        description="vLLM for engine.device: cuda (the image carries NIXL and UCX).",
    )
    vllmCpu: Image = Field(
        default_factory=lambda: Image(
            repository="public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo", tag="v0.32.0"
        ),
        description="vLLM for engine.device: cpu.",
    )


class Accelerator(ChartStrict):
    """How pods land on one accelerator type: node labels, taints, the device resource."""

    nodeLabel: str | None = Field(
        None, description="Node label naming the device, e.g. nvidia.com/gpu.product."
    )
    nodeLabelValues: list[str] = Field(
        default_factory=list, description="Any of these values matches (node affinity `In`)."
    )
    gpuResource: str | None = Field(
        None, description="Extended resource, e.g. nvidia.com/gpu; one per tensor-parallel rank."
    )
    tolerations: list[K8sObject] = Field(default_factory=list)


class PodDisruptionBudget(ChartStrict):
    enabled: bool = True
    maxUnavailable: int = Field(1, ge=0, description="Voluntary evictions at a time.")


def _seeded(name: str) -> str:
    if name not in SEEDED_MODELS:
        raise ValueError(f"{name!r} is not a seeded checkpoint; use one of {list(SEEDED_MODELS)}")
    return name


SEEDED_SCHEMA = {"type": "string", "enum": list(SEEDED_MODELS)}
SeededModel = Annotated[str, AfterValidator(_seeded), WithJsonSchema(SEEDED_SCHEMA)]


def _one_or_many(value: object) -> object:
    """`seed: tiny` (one name, as values files before several models wrote it) or `seed:
    null` (nothing to seed) read as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


SeededModels = Annotated[
    list[SeededModel],
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": SEEDED_SCHEMA, "uniqueItems": True},
                SEEDED_SCHEMA,
                {"type": "null"},
            ]
        }
    ),
]


class ModelCache(ChartStrict):
    """Where weights live, so a new pod loads them from disk and never from a hub."""

    type: Literal["pvc", "hostPath"] = "pvc"
    mountPath: str = Field("/models", pattern=r"^/")
    claimName: str = Field("pdserve-models", description="pvc: an existing ReadWriteMany claim.")
    hostPath: str = Field("/mnt/models", pattern=r"^/", description="hostPath: node directory.")
    readOnly: bool = Field(
        False, description="Mount read-only (seeded tiny/small checkpoints need it writable)."
    )
    seed: SeededModels = Field(
        default_factory=list,
        description="The seeded checkpoints the profile's models use (one name or a list): a "
        "pool whose model's source is one of them writes it to <mountPath>/<source> by an init "
        "container (`pdserve model`) and loads it from there; any other source is a path "
        "inside the cache.",
    )


class Vllm(ChartStrict):
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of every worker container.")
    nixlSideChannelPort: int = Field(5600, ge=1, le=65535, description="NIXL handshake port.")
    shmSize: str = Field("2Gi", description="/dev/shm for tensor-parallel workers.")
    startupTimeoutSeconds: int = Field(
        1200, ge=60, description="Model load allowed before the pod is restarted."
    )


class GatewayDeploy(PodSettings):
    replicas: int = Field(
        2, ge=1, le=64, description="Gateways; one leader scales, every one proxies."
    )
    service: K8sObject = Field(
        default_factory=lambda: {"type": "ClusterIP", "port": 80},
        description="type and port of the gateway Service.",
    )
    resources: K8sObject = Field(default_factory=dict)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[K8sObject] = Field(default_factory=list)
    env: list[K8sObject] = Field(
        default_factory=list, description="e.g. PDSERVE_API_KEYS from a Secret."
    )
    strategy: K8sObject = Field(default_factory=rolling_update(0))
    podDisruptionBudget: PodDisruptionBudget = Field(default_factory=empty(PodDisruptionBudget))
    leaderElection: LeaderElection = Field(default_factory=empty(LeaderElection))
    adminToken: Secret = Field(
        default_factory=empty(Secret), description="The admin API's bearer token."
    )
    workerApiKey: Secret = Field(
        default_factory=empty(Secret),
        description="The key every worker requires (vLLM's VLLM_API_KEY); only the gateway "
        "holds it.",
    )


class AutoscalingMode(str, Enum):
    pdserve = "pdserve"
    keda = "keda"
    none = "none"


class Keda(ChartStrict):
    prometheusAddress: str = Field(
        "http://prometheus-operated.monitoring.svc:9090",
        description="Prometheus that scrapes the gateway's /metrics.",
    )
    pollingInterval: int = Field(10, ge=1, description="Seconds between KEDA's queries.")
    matchNamespace: bool = Field(
        True, description='Add namespace="<release namespace>" to every query.'
    )


class Autoscaling(ChartStrict):
    mode: AutoscalingMode = Field(
        AutoscalingMode.pdserve,
        description="pdserve: the gateway patches deployments/scale; keda: a ScaledObject per "
        "pool on the gateway's per-pool metrics; none: fixed at replicas.initial.",
    )
    keda: Keda = Field(default_factory=empty(Keda))


class HttpRoute(ChartStrict):
    enabled: bool = False
    parentRefs: list[K8sObject] = Field(default_factory=list, description="Gateway API parents.")
    hostnames: list[str] = Field(default_factory=list)
    timeouts: RouteTimeouts = Field(
        default_factory=empty(RouteTimeouts),
        description='Gateway API rule timeouts; "0s" is no limit (streams run for minutes).',
    )


class ServiceMonitor(ChartStrict):
    enabled: bool = False
    interval: str = "15s"
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. release: prometheus")


class Dashboard(ChartStrict):
    enabled: bool = Field(
        False,
        description='A ConfigMap with the P/D overview dashboard, labelled grafana_dashboard: "1" '
        "for Grafana's dashboard sidecar.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="More ConfigMap labels.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="e.g. grafana_folder: pdserve"
    )


class PodMonitors(ChartStrict):
    pools: bool = Field(
        False, description="A PodMonitor per pool for its workers' /metrics, labelled pool=NAME."
    )
    gateway: bool = Field(False, description="A PodMonitor for the gateway pods' /metrics.")
    interval: str = "15s"
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. release: prometheus")


class Monitoring(ChartStrict):
    """Grafana and Prometheus Operator objects (monitoring.coreos.com/v1 PodMonitors)."""

    dashboard: Dashboard = Field(default_factory=empty(Dashboard))
    podMonitors: PodMonitors = Field(default_factory=empty(PodMonitors))
