"""Pydantic models of the Helm chart's values, and the chart's values.schema.json made from them.

The serving parts reuse the profile's own models (model, engine, routing, KV transfer, gateway,
each pool's replicas and scaling), so a key means the same in a profile and in the values and
its limits are written once. The Kubernetes parts (images, accelerators, model cache,
autoscaling mode, optional routes and monitors) are chart keys, camelCase as Helm charts spell
them, modelled in pdserve.helm.chart_values and pdserve.helm.pod_values and importable from
here. `python -m pdserve.helm.values` rewrites the committed schema; a test checks they agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints, model_validator

from pdserve import package_data
from pdserve.helm.chart_values import SEEDED_SCHEMA as SEEDED_SCHEMA
from pdserve.helm.chart_values import (
    Accelerator,
    Autoscaling,
    AutoscalingMode,
    GatewayDeploy,
    HttpRoute,
    Images,
    ModelCache,
    Monitoring,
    PodDisruptionBudget,
    ServiceMonitor,
    Vllm,
    empty,
)
from pdserve.helm.chart_values import Dashboard as Dashboard
from pdserve.helm.chart_values import Image as Image
from pdserve.helm.chart_values import Keda as Keda
from pdserve.helm.chart_values import PodMonitors as PodMonitors
from pdserve.helm.chart_values import SeededModel as SeededModel
from pdserve.helm.chart_values import SeededModels as SeededModels
from pdserve.helm.pod_values import (
    ChartStrict,
    K8sObject,
    NetworkPolicy,
    PodSettings,
    rolling_update,
)
from pdserve.profile import (
    AcceleratorName,
    ActuatorKind,
    EngineKind,
    EngineSpec,
    GatewaySpec,
    KVTransferSpec,
    ModelSpec,
    PoolEngine,
    PoolSpec,
    Profile,
    Replicas,
    Role,
    RoutingSpec,
    ScalingSpec,
    ServedModel,
)
from pdserve.profile_rollouts import RolloutSpec

CHART_DIR = package_data.chart_dir()
"""The chart (package data; `manifests/helm/pdserve` of a source checkout)."""
SCHEMA_PATH = CHART_DIR / "values.schema.json"
POOL_LABEL = "pdserve.io/pool"

DnsLabel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")]


class ProfileValues(ChartStrict):
    """The serving profile minus its pools (under `pools`) and actuator (the chart sets it)."""

    name: str = Field("default", description="Profile name the gateway reports.")
    description: str = ""
    model: ModelSpec = Field(default_factory=empty(ModelSpec))
    models: list[ServedModel] = Field(
        default_factory=list,
        description="Further models the gateway serves, each by the pools naming it (`model`).",
    )
    engine: EngineSpec = Field(default_factory=empty(EngineSpec))
    routing: RoutingSpec = Field(default_factory=empty(RoutingSpec))
    kv_transfer: KVTransferSpec = Field(default_factory=empty(KVTransferSpec))
    gateway: GatewaySpec = Field(default_factory=empty(GatewaySpec))
    rollouts: list[RolloutSpec] = Field(
        default_factory=list,
        description="The profile's gradual rollouts, stepped and rolled back by the gateway.",
    )


class EnvVar(ChartStrict):
    name: str = Field(min_length=1)
    value: str


class VllmServer(ChartStrict):
    """One pool's vLLM server as `pdserve render` composes it (pdserve/workers/vllm_command.py,
    the same code that starts local workers). The chart runs it verbatim; edit the profile and
    render again rather than these lists."""

    command: list[str] = Field(min_length=1, description="The server's program and module.")
    args: list[str] = Field(description="vLLM's flags; the pool's extraArgs follow them.")
    env: list[EnvVar] = Field(
        default_factory=list,
        description="The server's environment (a list: Helm replaces it whole, never merges it "
        "with the chart's defaults); $(POD_IP) is the pod's IP.",
    )


class PoolValues(PodSettings):
    """One pool: the profile's pool keys plus where and how its pods run."""

    role: Role = Field(description="prefill | decode | both")
    model: str | None = Field(
        None, description="The served model of this pool (`profile.models`); unset: profile.model."
    )
    accelerator: AcceleratorName = Field("cpu", description="A key of `accelerators`.")
    tensorParallelSize: int = Field(1, ge=1, le=64, description="GPUs per node of a replica.")
    nodes: int = Field(
        1, ge=1, le=64, description="Nodes per replica; above 1 the pool is a LeaderWorkerSet."
    )
    replicas: Replicas = Field(default_factory=empty(Replicas))
    scaling: ScalingSpec = Field(default_factory=empty(ScalingSpec))
    engine: PoolEngine = Field(
        default_factory=empty(PoolEngine),
        description="The profile pool's own engine settings, as `pdserve render` copies them: "
        "already in `vllm`'s flags and env, and read by the gateway (its admission caps a "
        "replica at the pool's max_num_seqs).",
    )
    resources: K8sObject = Field(
        default_factory=dict, description="Container requests/limits; GPUs are added for you."
    )
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[K8sObject] = Field(default_factory=list)
    env: list[K8sObject] = Field(default_factory=list, description="Extra container env.")
    vllm: VllmServer | None = Field(
        None, description="The vLLM server, from `pdserve render` (none for simulated pools)."
    )
    extraArgs: list[str] = Field(
        default_factory=list,
        description="Extra vLLM flags, this pool (e.g. --load-format runai_streamer; a pool "
        "spanning nodes: --pipeline-parallel-size N --distributed-executor-backend ray).",
    )
    podDisruptionBudget: PodDisruptionBudget = Field(default_factory=empty(PodDisruptionBudget))
    shmSize: str | None = Field(None, description="/dev/shm of this pool; unset: vllm.shmSize.")
    strategy: K8sObject = Field(
        default_factory=rolling_update(0), description="The Deployment's (not a LeaderWorkerSet's)."
    )

    def to_pool_spec(self) -> PoolSpec:
        return PoolSpec.model_validate(
            {
                "role": self.role,
                "model": self.model,
                "accelerator": self.accelerator,
                "tensor_parallel_size": self.tensorParallelSize,
                "replicas": self.replicas,
                "scaling": self.scaling,
                "engine": self.engine,
            }
        )


class HelmValues(ChartStrict):
    """Everything `helm install -f values.yaml` accepts; values.schema.json is this model's."""

    nameOverride: str = ""
    fullnameOverride: str = ""
    images: Images = Field(default_factory=empty(Images))
    profile: ProfileValues = Field(default_factory=empty(ProfileValues))
    pools: dict[DnsLabel, PoolValues] = Field(
        description="Pools by name: prefill, decode, ...",
        json_schema_extra={"additionalProperties": False},
    )
    accelerators: dict[str, Accelerator] = Field(
        description="Accelerator types by the names pools use."
    )
    modelCache: ModelCache = Field(default_factory=empty(ModelCache))
    vllm: Vllm = Field(default_factory=empty(Vllm))
    gateway: GatewayDeploy = Field(default_factory=empty(GatewayDeploy))
    autoscaling: Autoscaling = Field(default_factory=empty(Autoscaling))
    httpRoute: HttpRoute = Field(default_factory=empty(HttpRoute))
    serviceMonitor: ServiceMonitor = Field(default_factory=empty(ServiceMonitor))
    monitoring: Monitoring = Field(default_factory=empty(Monitoring))
    networkPolicy: NetworkPolicy = Field(default_factory=empty(NetworkPolicy))
    imagePullSecrets: list[K8sObject] = Field(
        default_factory=list, description="Every pod's, e.g. [{name: regcred}]."
    )
    extraObjects: list[K8sObject | str] = Field(
        default_factory=list,
        description="More manifests to install with the release (strings go through `tpl`).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HelmValues:
        unknown = sorted({p.accelerator for p in self.pools.values()} - set(self.accelerators))
        if unknown:
            raise ValueError(f"pools use accelerators {unknown} missing from `accelerators`")
        if self.profile.engine.kind is EngineKind.vllm:
            missing = sorted(name for name, pool in self.pools.items() if pool.vllm is None)
            if missing:
                raise ValueError(
                    f"pools {missing} have no `vllm` server: write the values with `pdserve render`"
                )
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
            "lease_name": f"{prefix}-gateway",
            "lease_duration_s": self.gateway.leaderElection.leaseDurationSeconds,
            "lease_retry_s": self.gateway.leaderElection.retryPeriodSeconds,
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
            print(f"{args.path} is stale: run python -m pdserve.helm.values", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
