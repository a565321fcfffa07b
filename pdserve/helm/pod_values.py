"""The chart's pod escape hatches and secure defaults as pydantic models (pdserve.helm.values
uses them): what every pool's and the gateway's pod may add, the gateways' leader election,
generated Secrets, the workers' NetworkPolicy and the HTTPRoute's timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

K8sObject = dict[str, Any]
"""A Kubernetes object passed through verbatim (resources, tolerations, parentRefs...)."""


class ChartStrict(BaseModel):
    """Base of every chart model: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _restricted_pod() -> K8sObject:
    """Pod Security "restricted": non-root (a uid, since upstream images default to root),
    the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _restricted_container() -> K8sObject:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def rolling_update(max_unavailable: int) -> Callable[[], K8sObject]:
    return lambda: {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": max_unavailable},
    }


class PodSettings(ChartStrict):
    """The escape hatches of a pod (each pool's and the gateway's), passed to it verbatim.
    Helm merges a map you set with these defaults: null a default key to drop it."""

    imagePullSecrets: list[K8sObject] = Field(
        default_factory=list, description="e.g. [{name: regcred}], after the top-level ones."
    )
    podLabels: dict[str, str] = Field(
        default_factory=dict, description="e.g. kueue.x-k8s.io/queue-name: team-a"
    )
    podAnnotations: dict[str, str] = Field(default_factory=dict)
    priorityClassName: str | None = None
    affinity: K8sObject = Field(
        default_factory=dict,
        description="Pod (anti-)affinity and preferred node affinity; a pool's accelerator "
        "owns the required node affinity.",
    )
    topologySpreadConstraints: list[K8sObject] = Field(default_factory=list)
    podSecurityContext: K8sObject = Field(
        default_factory=_restricted_pod, description="Pod Security restricted by default."
    )
    securityContext: K8sObject = Field(
        default_factory=_restricted_container, description="The main container's."
    )
    extraVolumes: list[K8sObject] = Field(default_factory=list)
    extraVolumeMounts: list[K8sObject] = Field(
        default_factory=list, description="Mounted in the main container."
    )


class LeaderElection(ChartStrict):
    """The gateways elect one leader through a coordination.k8s.io/v1 Lease: it alone runs the
    autoscaler; the others proxy and take over when its lease lapses."""

    leaseDurationSeconds: int = Field(
        15, ge=1, description="A follower takes over this long after the leader's last renewal."
    )
    retryPeriodSeconds: float = Field(
        2, gt=0, description="How often the leader renews and followers try."
    )


class Secret(ChartStrict):
    existingSecret: str | None = Field(
        None,
        description="A Secret you manage; unset: the chart makes one with a random token, "
        "kept across upgrades.",
    )
    key: str = Field("token", min_length=1, description="The key inside the Secret.")


class NetworkPolicy(ChartStrict):
    """Workers' ingress: their HTTP port from this release's gateways only, NIXL's side channel
    from its workers only."""

    enabled: bool = True
    metricsFrom: list[K8sObject] = Field(
        default_factory=list,
        description="NetworkPolicy peers also let to the workers' HTTP port (e.g. Prometheus).",
    )
    workerDataPorts: bool = Field(
        False,
        description="Let workers reach each other on every port: UCX's TCP transport "
        "(ucx_tls with tcp, no RDMA) moves KV over ports it picks.",
    )


class RouteTimeouts(ChartStrict):
    request: str = Field("0s", description="The whole request, stream included; 0s: no limit.")
    backendRequest: str = Field("0s", description="One try to the gateway Service.")
