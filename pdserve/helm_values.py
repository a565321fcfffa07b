"""Pydantic models of the Helm chart's values, and the chart's values.schema.json made from them.

The serving parts reuse the profile's own models (model, engine, routing, KV transfer, gateway,
each pool's replicas and scaling), so a key means the same in a profile and in the values and
its limits are written once. The Kubernetes parts (images, accelerators, model cache,
autoscaling mode, optional routes and monitors) are chart keys, camelCase as Helm charts spell
them. `python -m pdserve.helm_values` rewrites the committed schema; a test checks they agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pdserve.profile import (
    ActuatorKind,
    EngineSpec,
    GatewaySpec,
    KVTransferSpec,
    ModelSpec,
    PoolSpec,
    Profile,
    Replicas,
    Role,
    RoutingSpec,
    ScalingSpec,
)

CHART_DIR = Path(__file__).resolve().parent.parent / "manifests" / "helm" / "pdserve"
SCHEMA_PATH = CHART_DIR / "values.schema.json"
POOL_LABEL = "pdserve.io/pool"

DnsLabel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")]
ModelT = TypeVar("ModelT", bound=BaseModel)
K8sObject = dict[str, Any]
"""A Kubernetes object passed through verbatim (resources, tolerations, parentRefs...)."""


def _empty(model: type[ModelT]) -> Callable[[], ModelT]:
    """A default factory: the model with every default (typed the same with or without the
    pydantic mypy plugin)."""
    return lambda: model.model_validate({})


class ChartStrict(BaseModel):
    """Base of every chart model: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ProfileValues(ChartStrict):
    """The serving profile minus its pools (under `pools`) and actuator (the chart sets it)."""

    name: str = Field("default", description="Profile name the gateway reports.")
    description: str = ""
    model: ModelSpec = Field(default_factory=_empty(ModelSpec))
    engine: EngineSpec = Field(default_factory=_empty(EngineSpec))
    routing: RoutingSpec = Field(default_factory=_empty(RoutingSpec))
    kv_transfer: KVTransferSpec = Field(default_factory=_empty(KVTransferSpec))
    gateway: GatewaySpec = Field(default_factory=_empty(GatewaySpec))


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


class PoolValues(ChartStrict):
    """One pool: the profile's pool keys plus where and how its pods run."""

    role: Role = Field(description="prefill | decode | both")
    accelerator: str = Field("cpu", description="A key of `accelerators`.")
    tensorParallelSize: int = Field(1, ge=1, le=64, description="GPUs per node of a replica.")
    nodes: int = Field(
        1, ge=1, le=64, description="Nodes per replica; above 1 the pool is a LeaderWorkerSet."
    )
    replicas: Replicas = Field(default_factory=_empty(Replicas))
    scaling: ScalingSpec = Field(default_factory=_empty(ScalingSpec))
    resources: K8sObject = Field(
        default_factory=dict, description="Container requests/limits; GPUs are added for you."
    )
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[K8sObject] = Field(default_factory=list)
    env: list[K8sObject] = Field(default_factory=list, description="Extra container env.")
    extraArgs: list[str] = Field(default_factory=list, description="Extra vLLM flags, this pool.")
    podDisruptionBudget: PodDisruptionBudget = Field(default_factory=_empty(PodDisruptionBudget))

    def to_pool_spec(self) -> PoolSpec:
        return PoolSpec.model_validate(
            {
                "role": self.role,
                "accelerator": self.accelerator,
                "tensor_parallel_size": self.tensorParallelSize,
                "replicas": self.replicas,
                "scaling": self.scaling,
            }
        )


class ModelCache(ChartStrict):
    """Where weights live, so a new pod loads them from disk and never from a hub."""

    type: Literal["pvc", "hostPath"] = "pvc"
    mountPath: str = Field("/models", pattern=r"^/")
    claimName: str = Field("pdserve-models", description="pvc: an existing ReadWriteMany claim.")
    hostPath: str = Field("/mnt/models", pattern=r"^/", description="hostPath: node directory.")
    readOnly: bool = Field(
        False, description="Mount read-only (seeded tiny/small checkpoints need it writable)."
    )


class Vllm(ChartStrict):
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of every worker container.")
    nixlSideChannelPort: int = Field(5600, ge=1, le=65535, description="NIXL handshake port.")
    loadFormat: Literal["runai_streamer"] | None = Field(
        None, description="runai_streamer streams safetensors from the cache (faster cold start)."
    )
    shmSize: str = Field("2Gi", description="/dev/shm for tensor-parallel workers.")
    startupTimeoutSeconds: int = Field(
        1200, ge=60, description="Model load allowed before the pod is restarted."
    )


class GatewayDeploy(ChartStrict):
    replicas: int = Field(1, ge=1, le=1, description="One gateway: it owns the scaling loops.")
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
    keda: Keda = Field(default_factory=_empty(Keda))


class HttpRoute(ChartStrict):
    enabled: bool = False
    parentRefs: list[K8sObject] = Field(default_factory=list, description="Gateway API parents.")
    hostnames: list[str] = Field(default_factory=list)


class ServiceMonitor(ChartStrict):
    enabled: bool = False
    interval: str = "15s"
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. release: prometheus")


class HelmValues(ChartStrict):
    """Everything `helm install -f values.yaml` accepts; values.schema.json is this model's."""

    nameOverride: str = ""
    fullnameOverride: str = ""
    images: Images = Field(default_factory=_empty(Images))
    profile: ProfileValues = Field(default_factory=_empty(ProfileValues))
    pools: dict[DnsLabel, PoolValues] = Field(
        description="Pools by name: prefill, decode, ...",
        json_schema_extra={"additionalProperties": False},
    )
    accelerators: dict[str, Accelerator] = Field(
        description="Accelerator types by the names pools use."
    )
    modelCache: ModelCache = Field(default_factory=_empty(ModelCache))
    vllm: Vllm = Field(default_factory=_empty(Vllm))
    gateway: GatewayDeploy = Field(default_factory=_empty(GatewayDeploy))
    autoscaling: Autoscaling = Field(default_factory=_empty(Autoscaling))
    httpRoute: HttpRoute = Field(default_factory=_empty(HttpRoute))
    serviceMonitor: ServiceMonitor = Field(default_factory=_empty(ServiceMonitor))

    @model_validator(mode="after")
    def _consistent(self) -> HelmValues:
        unknown = sorted({p.accelerator for p in self.pools.values()} - set(self.accelerators))
        if unknown:
            raise ValueError(f"pools use accelerators {unknown} missing from `accelerators`")
        spanning = sorted(name for name, pool in self.pools.items() if pool.nodes > 1)
        if spanning and self.autoscaling.mode is AutoscalingMode.pdserve:
            raise ValueError(
                f"pools {spanning} span nodes (LeaderWorkerSet), which the gateway's kubernetes "
                "actuator does not scale: set autoscaling.mode: keda or none"
            )
        self.to_profile("values")  # the profile's own rules across pools (roles vs routing)
        return self

    def to_profile(self, namespace: str, prefix: str = "pdserve") -> Profile:
        """The profile the gateway runs with: these pools, scaled through Kubernetes."""
        kubernetes = {
            "namespace": namespace,
            "deployment_prefix": prefix,
            "pool_label": POOL_LABEL,
            "port": self.vllm.port,
            "manage_replicas": self.autoscaling.mode is AutoscalingMode.pdserve,
        }
        return Profile.model_validate(
            {
                **self.profile.model_dump(),
                "pools": {name: pool.to_pool_spec() for name, pool in self.pools.items()},
                "actuator": {"kind": ActuatorKind.kubernetes, "kubernetes": kubernetes},
            }
        )


def values_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the chart's values, as Helm checks them."""
    schema = HelmValues.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def values_schema_text() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the chart's values schema.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--path", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = values_schema_text()
    if args.check:
        current = args.path.read_text() if args.path.is_file() else ""
        if current != text:
            print(f"{args.path} is stale: run python -m pdserve.helm_values", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
