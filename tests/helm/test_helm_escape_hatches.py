"""The chart's escape hatches and secure defaults, rendered by the real helm binary and checked
with `kubernetes-validate --strict`: every core object under the new values, and what lands
where (pod labels, pull secrets, the restricted securityContext, the NetworkPolicy, the PDBs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import render_values
from pdserve.helm.values import HelmValues, PodSettings

from .conftest import Objects, Template, named, of_kind, worker_container

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.33.0"
PREFIX = "pd-pdserve"
CORE = {"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Role",
        "RoleBinding", "Secret", "Service", "ServiceAccount"}  # fmt: skip
QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}
SPREAD = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
          "whenUnsatisfiable": "ScheduleAnyway",
          "labelSelector": {"matchLabels": {"pdserve.io/pool": "decode"}}}  # fmt: skip
HATCHES: dict[str, Any] = {
    "imagePullSecrets": [{"name": "pool-cred"}],
    "podLabels": QUEUE,
    "podAnnotations": {"example.com/owner": "serving"},
    "priorityClassName": "inference",
    "topologySpreadConstraints": [SPREAD],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": QUEUE}}}]}},
    "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def hatched(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Objects:
    values = render_values(profiles.load("a100-l4"))
    for name, pool in values["pools"].items():
        pool.update(HATCHES)
        if name == "decode":
            pool["shmSize"] = "8Gi"
            pool["strategy"] = {"type": "Recreate"}
    values["gateway"] = {**HATCHES, "replicas": 3, "podLabels": {"team": "serving"}}
    values["imagePullSecrets"] = [{"name": "everyone"}]
    values["extraObjects"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra-{{ .Release.Name }}"},
         "data": {"k": "v"}},
    ]  # fmt: skip
    HelmValues.model_validate(values)  # the models accept what the schema does
    path = tmp_path_factory.mktemp("hatched") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return template(path)


def test_every_core_object_passes_strict_validation(hatched: Objects) -> None:
    kinds = {obj["kind"] for obj in hatched}
    assert {"NetworkPolicy", "PodDisruptionBudget", "Secret"} <= kinds
    for obj in hatched:
        if obj["kind"] in CORE:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _pods(objects: Objects) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in of_kind(objects, "Deployment")}


def test_pool_pods_carry_the_escape_hatches(hatched: Objects) -> None:
    for pool in ("prefill", "decode"):
        template = _pods(hatched)[f"{PREFIX}-{pool}"]
        pod = template["spec"]
        assert template["metadata"]["labels"].items() >= {**QUEUE, "pdserve.io/pool": pool}.items()
        assert template["metadata"]["annotations"] == {"example.com/owner": "serving"}
        assert pod["imagePullSecrets"] == [{"name": "everyone"}, {"name": "pool-cred"}]
        assert pod["priorityClassName"] == "inference"
        assert pod["topologySpreadConstraints"] == [SPREAD]
        assert "podAntiAffinity" in pod["affinity"]
        # the accelerator's required node affinity survives the pool's own affinity
        assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
        mounts = worker_container({"spec": {"template": template}})["volumeMounts"]
        assert {"name": "scratch", "mountPath": "/scratch"} in mounts
    decode = named(hatched, "Deployment", f"{PREFIX}-decode")
    shm = {v["name"]: v for v in decode["spec"]["template"]["spec"]["volumes"]}["dshm"]
    assert shm["emptyDir"]["sizeLimit"] == "8Gi"
    assert decode["spec"]["strategy"] == {"type": "Recreate"}
    prefill = _pods(hatched)[f"{PREFIX}-prefill"]["spec"]
    assert {v["name"]: v for v in prefill["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "2Gi"
    assert named(hatched, "ConfigMap", "extra-pd")["data"] == {"k": "v"}


def _restricted(pod: dict[str, Any]) -> None:
    """Pod Security Standards, restricted profile (kubernetes.io/docs/concepts/security/
    pod-security-standards): non-root, no privilege escalation, ALL capabilities dropped,
    seccomp RuntimeDefault or Localhost."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context.get("privileged", False)
    assert not any("hostPath" in volume for volume in pod["volumes"])


@pytest.mark.parametrize("profile", ["a100-l4", "sim", "disaggregated"])
def test_every_pod_is_restricted_by_default(
    rendered: dict[str, Objects], hatched: Objects, profile: str
) -> None:
    for template in _pods(rendered[profile]).values():
        _restricted(template["spec"])
    for template in _pods(hatched).values():
        _restricted(template["spec"])


def test_the_templates_defaults_are_the_models(template: Template, tmp_path: Path) -> None:
    """A hand-written pool block without securityContext keys gets the models' defaults."""
    values = render_values(profiles.load("a100-l4"))
    for pool in values["pools"].values():
        del pool["podSecurityContext"], pool["securityContext"]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    pod = _pods(template(path))[f"{PREFIX}-decode"]["spec"]
    defaults = PodSettings()
    assert pod["securityContext"] == defaults.podSecurityContext
    assert worker_container({"spec": {"template": {"spec": pod}}})["securityContext"] == (
        defaults.securityContext
    )


def test_gateways_roll_one_at_a_time_behind_a_budget(hatched: Objects) -> None:
    gateway = named(hatched, "Deployment", f"{PREFIX}-gateway")
    assert gateway["spec"]["replicas"] == 3
    assert gateway["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    budget = named(hatched, "PodDisruptionBudget", f"{PREFIX}-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["team"] == "serving" and labels["app.kubernetes.io/component"] == "gateway"
    for deployment in of_kind(hatched, "Deployment"):  # the release in every selector
        assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "pd"


def test_admin_token_and_worker_key_come_from_generated_secrets(hatched: Objects) -> None:
    secrets = {s["metadata"]["name"]: s for s in of_kind(hatched, "Secret")}
    assert set(secrets) == {f"{PREFIX}-admin", f"{PREFIX}-worker-key"}
    assert all(len(s["data"]["token"]) >= 48 for s in secrets.values())
    gateway = named(hatched, "Deployment", f"{PREFIX}-gateway")
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = {"secretKeyRef": {"name": f"{PREFIX}-admin", "key": "token"}}
    assert env["PDSERVE_ADMIN_TOKEN"]["valueFrom"] == ref
    key_ref = {"secretKeyRef": {"name": f"{PREFIX}-worker-key", "key": "token"}}
    assert env["PDSERVE_WORKER_API_KEY"]["valueFrom"] == key_ref
    for pool in ("prefill", "decode"):
        container = worker_container(named(hatched, "Deployment", f"{PREFIX}-{pool}"))
        worker_env = {e["name"]: e for e in container["env"]}
        assert worker_env["VLLM_API_KEY"]["valueFrom"] == key_ref  # vLLM reads it as --api-key


def test_an_existing_secret_is_used_and_none_is_made(template: Template, tmp_path: Path) -> None:
    values = render_values(profiles.load("a100-l4"))
    values["gateway"] = {"adminToken": {"existingSecret": "mine", "key": "admin"}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    objects = template(path)
    assert [s["metadata"]["name"] for s in of_kind(objects, "Secret")] == [f"{PREFIX}-worker-key"]
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PDSERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mine",
        "key": "admin",
    }


def test_only_gateways_reach_workers_and_only_workers_the_side_channel(hatched: Objects) -> None:
    [policy] = of_kind(hatched, "NetworkPolicy")
    spec = policy["spec"]
    worker_labels = _pods(hatched)[f"{PREFIX}-decode"]["metadata"]["labels"]
    gateway_labels = _pods(hatched)[f"{PREFIX}-gateway"]["metadata"]["labels"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert not spec["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    http, nixl = spec["ingress"]
    assert http["ports"] == [{"port": "http", "protocol": "TCP"}]
    [gateways] = http["from"]
    assert gateways["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert not gateways["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert nixl["ports"] == [{"port": "nixl", "protocol": "TCP"}]
    [workers] = nixl["from"]
    assert workers["podSelector"]["matchLabels"].items() <= worker_labels.items()
    container = worker_container(named(hatched, "Deployment", f"{PREFIX}-prefill"))
    assert {p["name"] for p in container["ports"]} == {"http", "nixl"}  # the named ports exist


def test_http_route_sets_no_stream_limit_by_default(template: Template, values_dir: Path) -> None:
    objects = template(
        values_dir / "a100-l4.yaml",
        sets=("httpRoute.enabled=true", "httpRoute.parentRefs[0].name=gw"),
    )
    [route] = of_kind(objects, "HTTPRoute")
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "0s", "backendRequest": "0s"}
