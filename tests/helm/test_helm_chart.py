"""The chart rendered by the real helm binary from `pdserve render` output, read as objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pdserve import profile as profiles
from pdserve.helm.render import render_values_yaml
from pdserve.helm.values import CHART_DIR, SCHEMA_PATH, values_schema_text

from .conftest import (
    NAMESPACE,
    RELEASE,
    SHIPPED,
    Objects,
    Template,
    chart_profile,
    env_of,
    named,
    of_kind,
    run_helm,
    worker_container,
)

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "1.33.0"  # the kubectl/helm layer's Kubernetes minor
CORE_KINDS = {
    "ConfigMap",
    "NetworkPolicy",
    "Secret",
    "Deployment",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
}
CRD_KINDS = {"ScaledObject", "HTTPRoute", "ServiceMonitor", "LeaderWorkerSet"}
PREFIX = f"{RELEASE}-pdserve"


def test_schema_file_is_the_one_generated_from_the_models() -> None:
    assert SCHEMA_PATH.read_text() == values_schema_text(), "run: python -m pdserve.helm.values"


def test_helm_lint_passes_with_the_charts_defaults(helm: Path) -> None:
    result = run_helm(helm, "lint", str(CHART_DIR), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_helm_lint_passes_with_each_profiles_values(
    helm: Path, values_dir: Path, name: str
) -> None:
    result = run_helm(
        helm, "lint", str(CHART_DIR), "--strict", "-f", str(values_dir / f"{name}.yaml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_rendered_core_objects_pass_strict_kubernetes_validation(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    assert {obj["kind"] for obj in objects} <= CORE_KINDS | CRD_KINDS
    for obj in objects:
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_can_fail_on_a_misplaced_field(rendered: dict[str, Objects]) -> None:
    deployment = named(rendered["a100-l4"], "Deployment", f"{PREFIX}-decode")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _node_products(deployment: dict[str, Any]) -> set[str]:
    pod = deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    [term] = terms["nodeSelectorTerms"]
    [expression] = term["matchExpressions"]
    assert expression["key"] == "nvidia.com/gpu.product"
    assert expression["operator"] == "In"
    return set(expression["values"])


def test_a100_l4_prefill_pods_land_on_a100_and_decode_pods_on_l4(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["a100-l4"]
    prefill = named(objects, "Deployment", f"{PREFIX}-prefill")
    decode = named(objects, "Deployment", f"{PREFIX}-decode")
    assert _node_products(prefill) == {"NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"}
    assert _node_products(decode) == {"NVIDIA-L4"}
    for deployment in (prefill, decode):
        container = worker_container(deployment)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # tensor_parallel_size
        assert container["image"].startswith("vllm/vllm-openai:")
        pod = deployment["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    # the gateway's autoscaler owns the counts: an upgrade or a GitOps sync must not reset them
    assert "replicas" not in prefill["spec"] and "replicas" not in decode["spec"]


def _args(container: dict[str, Any]) -> dict[str, str]:
    """--flag value pairs (a bare flag maps to "")."""
    args, pairs = container["args"], {}
    for index, token in enumerate(args):
        if token.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else "--"
            pairs[token] = "" if following.startswith("--") else following
    return pairs


@pytest.mark.parametrize("name", ["a100-l4", "local", "disaggregated"])
def test_nixl_args_and_env_on_prefill_and_decode(rendered: dict[str, Objects], name: str) -> None:
    loaded = chart_profile(name)
    for pool in ("prefill", "decode"):
        container = worker_container(named(rendered[name], "Deployment", f"{PREFIX}-{pool}"))
        assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        config = json.loads(_args(container)["--kv-transfer-config"])
        assert config == {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_buffer_device": loaded.kv_transfer.buffer_device.value,
            "kv_load_failure_policy": loaded.kv_transfer.kv_load_failure_policy,
            "kv_connector_extra_config": {
                "kv_lease_duration": int(loaded.kv_transfer.block_lease_s)
            },
        }
        env = env_of(container)
        assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "$(POD_IP)"  # expanded by the kubelet
        assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
        assert {"name": "nixl", "containerPort": 5600, "protocol": "TCP"} in container["ports"]
        if loaded.kv_transfer.ucx_tls:
            assert env["UCX_TLS"] == loaded.kv_transfer.ucx_tls


def test_a100_l4_workers_serve_the_cached_model_and_probe_health(
    rendered: dict[str, Objects],
) -> None:
    decode = named(rendered["a100-l4"], "Deployment", f"{PREFIX}-decode")
    container = worker_container(decode)
    args = _args(container)
    assert args["--model"] == "/models/Llama-3.1-8B-Instruct"
    assert args["--served-model-name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert args["--tensor-parallel-size"] == "1"
    assert args["--gpu-memory-utilization"] == "0.95"  # the L4 pool's own (a100-l4.yaml)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["python3", "-c"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-cache"] == {
        "name": "model-cache",
        "mountPath": "/models",
        "readOnly": True,
    }
    pod = decode["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "pdserve-models"}
    assert "initContainers" not in pod  # a model path: nothing to seed
    # drain_timeout_s 300 + 30 s for the server to stop after the preStop hook
    assert pod["terminationGracePeriodSeconds"] == 330
    assert decode["spec"]["template"]["metadata"]["labels"]["pdserve.io/pool"] == "decode"


def test_a_pools_extra_args_follow_the_rendered_flags(template: Template, values_dir: Path) -> None:
    sets = ("pools.prefill.extraArgs={--load-format,runai_streamer}",)
    objects = template(values_dir / "a100-l4.yaml", sets=sets)
    prefill = worker_container(named(objects, "Deployment", f"{PREFIX}-prefill"))
    assert prefill["args"][-2:] == ["--load-format", "runai_streamer"]
    decode = worker_container(named(objects, "Deployment", f"{PREFIX}-decode"))
    assert "--load-format" not in decode["args"]


def test_seeded_tiny_model_is_written_into_the_cache_by_an_init_container(
    rendered: dict[str, Objects],
) -> None:
    deployment = named(rendered["disaggregated"], "Deployment", f"{PREFIX}-decode")
    pod = deployment["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["pdserve", "model", "tiny", "--out", "/models/tiny"]
    assert _args(worker_container(deployment))["--model"] == "/models/tiny"
    assert "affinity" not in pod  # cpu pools go anywhere
    assert "nvidia.com/gpu" not in worker_container(deployment)["resources"].get("limits", {})


# pdserve/actuators/kubernetes.py lists a pool's pods, annotates drained victims with a
# pod-deletion-cost (patch), and patches (and reads) the Deployment's scale subresource.
PODS_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [f"{PREFIX}-gateway"],
        "verbs": ["get", "update"],
    },
]
VICTIMS_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}


def _scale_rule(pools: list[str]) -> dict[str, Any]:
    """The scale subresource of this release's pool Deployments, by name."""
    return {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": [f"{PREFIX}-{pool}" for pool in sorted(pools)],
        "verbs": ["get", "patch"],
    }


def _gateway_rbac(objects: Objects) -> list[dict[str, Any]]:
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    named(objects, "ServiceAccount", account)
    [binding] = of_kind(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["kind"] == "Role"  # namespaced: no ClusterRole at all
    assert not of_kind(objects, "ClusterRole")
    role = named(objects, "Role", binding["roleRef"]["name"])
    return role["rules"]


@pytest.mark.parametrize("name", SHIPPED)
def test_gateway_rbac_is_exactly_what_the_kubernetes_actuator_needs(
    rendered: dict[str, Objects], name: str
) -> None:
    pools = list(profiles.load(name).pools)
    expected = [PODS_RULE, *LEASE_RULES, VICTIMS_RULE, _scale_rule(pools)]
    assert _gateway_rbac(rendered[name]) == expected


def test_gateway_may_not_scale_when_keda_owns_the_replicas(
    template: Template, values_dir: Path
) -> None:
    objects = template(values_dir / "a100-l4.yaml", sets=("autoscaling.mode=keda",))
    assert _gateway_rbac(objects) == [PODS_RULE, *LEASE_RULES]  # nor patch a pod
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    assert loaded.actuator.kubernetes.manage_replicas is False


def test_gateway_deployment_reads_the_profile_and_probes_health_and_ready(
    rendered: dict[str, Objects],
) -> None:
    objects = rendered["a100-l4"]
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")
    pod = gateway["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][:4] == [
        "pdserve",
        "gateway",
        "--profile",
        "/etc/pdserve/profile.yaml",
    ]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["profile"]["configMap"]["name"] == f"{PREFIX}-gateway-profile"
    # the tokenizer under the profile's model path, read-only, to count prompt tokens
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "pdserve-models"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-cache"] == {
        "name": "model-cache",
        "mountPath": "/models",
        "readOnly": True,
    }
    assert profiles.load("a100-l4").model.source.startswith("/models/")
    service = named(objects, "Service", f"{PREFIX}-gateway")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_configmap_reproduces_the_profile_and_names_the_deployments(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    original = chart_profile(name)
    assert loaded.model == original.model
    assert loaded.engine == original.engine
    assert loaded.routing == original.routing
    assert loaded.kv_transfer == original.kv_transfer
    for pool, spec in original.pools.items():
        assert loaded.pools[pool].role == spec.role
        assert loaded.pools[pool].replicas == spec.replicas
        assert loaded.pools[pool].scaling == spec.scaling
    kubernetes = loaded.actuator.kubernetes
    assert loaded.actuator.kind is profiles.ActuatorKind.kubernetes
    assert (kubernetes.namespace, kubernetes.pool_label) == (NAMESPACE, "pdserve.io/pool")
    assert loaded.gateway.host == "0.0.0.0"
    for pool in original.pools:
        deployment = named(objects, "Deployment", f"{kubernetes.deployment_prefix}-{pool}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels[kubernetes.pool_label] == pool
        assert worker_container(deployment)["ports"][0]["containerPort"] == kubernetes.port


def test_standard_renders_one_unified_pool_and_no_prefill(rendered: dict[str, Objects]) -> None:
    objects = rendered["standard"]
    workers = [
        d for d in of_kind(objects, "Deployment") if not d["metadata"]["name"].endswith("gateway")
    ]
    assert [d["metadata"]["name"] for d in workers] == [f"{PREFIX}-decode"]
    assert not [obj for obj in objects if "prefill" in obj["metadata"]["name"]]
    container = worker_container(workers[0])
    assert "--kv-transfer-config" not in container["args"]  # no hop: no connector
    assert "VLLM_NIXL_SIDE_CHANNEL_HOST" not in env_of(container)
    assert workers[0]["spec"]["template"]["metadata"]["labels"]["pdserve.io/role"] == "both"
    budgets = sorted(b["metadata"]["name"] for b in of_kind(objects, "PodDisruptionBudget"))
    assert budgets == [f"{PREFIX}-decode", f"{PREFIX}-gateway"]


@pytest.mark.parametrize("name", SHIPPED)
def test_each_pool_has_a_service_and_a_disruption_budget_on_its_pods(
    rendered: dict[str, Objects], name: str
) -> None:
    objects = rendered[name]
    for pool in profiles.load(name).pools:
        deployment = named(objects, "Deployment", f"{PREFIX}-{pool}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = named(objects, "PodDisruptionBudget", f"{PREFIX}-{pool}")
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        service = named(objects, "Service", f"{PREFIX}-{pool}")
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_keda_mode_renders_one_scaled_object_per_pool_with_its_own_query(
    template: Template, values_dir: Path
) -> None:
    objects = template(values_dir / "a100-l4.yaml", sets=("autoscaling.mode=keda",))
    scaled = {
        obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "ScaledObject")
    }
    assert set(scaled) == {f"{PREFIX}-prefill", f"{PREFIX}-decode"}
    for name in scaled:
        named(objects, "Deployment", name)
    [prefill_trigger] = scaled[f"{PREFIX}-prefill"]["spec"]["triggers"]
    [decode_trigger] = scaled[f"{PREFIX}-decode"]["spec"]["triggers"]
    assert prefill_trigger["type"] == decode_trigger["type"] == "prometheus"
    prefill_query = prefill_trigger["metadata"]["query"]
    decode_query = decode_trigger["metadata"]["query"]
    assert prefill_query != decode_query
    assert prefill_query == (
        f'sum(pdserve_pool_queued_prompt_tokens{{pool="prefill",namespace="{NAMESPACE}"}})'
    )
    assert decode_query == f'sum(pdserve_pool_concurrency{{pool="decode",namespace="{NAMESPACE}"}})'
    # prefill: 25000 tokens/s x 1.0 s backlog per replica; decode: 24 requests per replica
    assert float(prefill_trigger["metadata"]["threshold"]) == 25000.0
    assert float(decode_trigger["metadata"]["threshold"]) == 24.0
    prefill_spec = scaled[f"{PREFIX}-prefill"]["spec"]
    assert (prefill_spec["minReplicaCount"], prefill_spec["maxReplicaCount"]) == (0, 8)
    assert prefill_spec["cooldownPeriod"] == 600  # scale_to_zero_grace_s
    behavior = scaled[f"{PREFIX}-decode"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert behavior["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_pdserve_and_none_modes_render_no_scaled_objects(
    rendered: dict[str, Objects], template: Template, values_dir: Path
) -> None:
    assert not of_kind(rendered["a100-l4"], "ScaledObject")
    objects = template(values_dir / "a100-l4.yaml", sets=("autoscaling.mode=none",))
    assert not of_kind(objects, "ScaledObject")
    assert _gateway_rbac(objects) == [PODS_RULE, *LEASE_RULES]


def _write(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("command", ["lint", "template"])
def test_schema_rejects_a_typo_in_a_pool_key(
    helm: Path, values_dir: Path, tmp_path: Path, command: str
) -> None:
    typo = _write(tmp_path / "typo.yaml", {"pools": {"decode": {"replicsa": {"max": 4}}}})
    args = [command, str(CHART_DIR), "-f", str(values_dir / "a100-l4.yaml"), "-f", str(typo)]
    if command == "template":
        args.insert(1, RELEASE)
    result = run_helm(helm, *args)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "replicsa" in output
    assert "schema" in output.lower()


def test_schema_rejects_an_impossible_value_and_an_unknown_mode(
    helm: Path, values_dir: Path, tmp_path: Path
) -> None:
    for bad in (
        {"pools": {"decode": {"tensorParallelSize": 0}}},
        {"autoscaling": {"mode": "hpa"}},
        {"profile": {"routing": {"prefill_threshold": -1}}},
        {"pools": {"decode": {"accelerator": "tpu-v5e"}}},  # not in pdserve's registry
        {"modelCache": {"seed": "huge"}},  # not a seeded checkpoint
    ):
        path = _write(tmp_path / "bad.yaml", bad)
        result = run_helm(
            helm,
            "template",
            RELEASE,
            str(CHART_DIR),
            "-f",
            str(values_dir / "a100-l4.yaml"),
            "-f",
            str(path),
        )
        assert result.returncode != 0, bad


PIPELINE = ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"]


def _pipeline(tmp_path: Path) -> Path:
    """vLLM's flags for a prefill pool spanning 2 nodes (`pdserve render` knows no nodes)."""
    return _write(tmp_path / "pipeline.yaml", {"pools": {"prefill": {"extraArgs": PIPELINE}}})


def test_pool_spanning_nodes_is_a_leader_worker_set(
    template: Template, values_dir: Path, tmp_path: Path
) -> None:
    objects = template(
        values_dir / "a100-l4.yaml",
        _pipeline(tmp_path),
        sets=("pools.prefill.nodes=2", "autoscaling.mode=keda"),
    )
    [group] = of_kind(objects, "LeaderWorkerSet")
    assert group["metadata"]["name"] == f"{PREFIX}-prefill"
    spec = group["spec"]["leaderWorkerTemplate"]
    assert spec["size"] == 2
    leader = spec["leaderTemplate"]
    assert leader["metadata"]["labels"]["pdserve.io/pool"] == "prefill"
    assert "pdserve.io/pool" not in spec["workerTemplate"]["metadata"]["labels"]
    [container] = leader["spec"]["containers"]
    server = yaml.safe_load((values_dir / "a100-l4.yaml").read_text())["pools"]["prefill"]["vllm"]
    assert container["command"] == ["sh", "-c", 'ray start --head --port=6379 && exec "$@"', "--"]
    assert container["args"] == [*server["command"], *server["args"], *PIPELINE]
    assert not [
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"].endswith("prefill")
    ]
    [scaled] = [
        obj
        for obj in of_kind(objects, "ScaledObject")
        if obj["spec"]["scaleTargetRef"]["name"] == f"{PREFIX}-prefill"
    ]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"


def test_pool_spanning_nodes_needs_an_autoscaler_that_scales_leader_worker_sets(
    helm: Path, values_dir: Path, tmp_path: Path
) -> None:
    result = run_helm(
        helm, "template", RELEASE, str(CHART_DIR), "-f", str(values_dir / "a100-l4.yaml"),
        "-f", str(_pipeline(tmp_path)), "--set", "pools.prefill.nodes=2",
    )  # fmt: skip
    assert result.returncode != 0
    assert "pools.prefill.nodes: 2" in result.stderr
    assert "autoscaling.mode: keda or none" in result.stderr


def _template_fails(helm: Path, values: Path, *sets: str) -> str:
    args = ["template", RELEASE, str(CHART_DIR), "-f", str(values)]
    for pair in sets:
        args += ["--set", pair]
    result = run_helm(helm, *args)
    assert result.returncode != 0, f"helm template with {sets} passed"
    return result.stderr


def test_pool_spanning_nodes_without_vllms_pipeline_flags_fails_and_says_which(
    helm: Path, values_dir: Path
) -> None:
    stderr = _template_fails(
        helm, values_dir / "a100-l4.yaml", "pools.prefill.nodes=2", "autoscaling.mode=keda"
    )
    assert "add --pipeline-parallel-size 2 --distributed-executor-backend ray" in stderr


def test_http_route_and_service_monitor_target_the_gateway_service(
    template: Template, values_dir: Path, tmp_path: Path
) -> None:
    extras = _write(
        tmp_path / "extras.yaml",
        {
            "httpRoute": {
                "enabled": True,
                "parentRefs": [{"name": "inference"}],
                "hostnames": ["llm.example.com"],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "modelCache": {"type": "hostPath", "hostPath": "/var/lib/models"},
        },
    )
    objects = template(values_dir / "a100-l4.yaml", extras)
    [route] = of_kind(objects, "HTTPRoute")
    [backend] = route["spec"]["rules"][0]["backendRefs"]
    service = named(objects, "Service", backend["name"])
    assert backend["port"] == service["spec"]["ports"][0]["port"]
    [monitor] = of_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    decode = named(objects, "Deployment", f"{PREFIX}-decode")
    volumes = {v["name"]: v for v in decode["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["hostPath"]["path"] == "/var/lib/models"
    for obj in objects:
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_chart_defaults_render_a_valid_unified_cpu_pool(template: Template) -> None:
    objects = template()
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    workers = [
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] != f"{PREFIX}-gateway"
    ]
    assert [d["metadata"]["name"] for d in workers] == [f"{PREFIX}-decode"]
    config = named(objects, "ConfigMap", f"{PREFIX}-gateway-profile")
    loaded = profiles.parse(yaml.safe_load(config["data"]["profile.yaml"]), "configmap")
    assert loaded.routing.mode is profiles.RoutingMode.standard


def test_gateway_stays_in_its_service_when_decode_may_scale_to_zero(
    template: Template, values_dir: Path
) -> None:
    objects = template(values_dir / "a100-l4.yaml", sets=("pools.decode.replicas.min=0",))
    gateway = named(objects, "Deployment", f"{PREFIX}-gateway")
    [container] = gateway["spec"]["template"]["spec"]["containers"]
    # /ready is 503 with no decode replica: the held requests could never arrive
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_tensor_parallel_size_sets_the_gpus_and_the_flag(
    template: Template, tmp_path: Path
) -> None:
    data = profiles.load("a100-l4").model_dump(mode="json")
    data["pools"]["prefill"]["tensor_parallel_size"] = 4
    path = tmp_path / "tp4.yaml"
    path.write_text(render_values_yaml(profiles.parse(data, "tp4")))
    objects = template(path)
    prefill = worker_container(named(objects, "Deployment", f"{PREFIX}-prefill"))
    assert prefill["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert _args(prefill)["--tensor-parallel-size"] == "4"
    decode = worker_container(named(objects, "Deployment", f"{PREFIX}-decode"))
    assert decode["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("pools.prefill.tensorParallelSize=4", "size 1 but tensorParallelSize is 4"),
        ("vllm.port=9000", "--port 8000 but vllm.port is 9000"),
    ],
)
def test_a_chart_key_that_disagrees_with_the_rendered_flags_fails(
    helm: Path, values_dir: Path, pair: str, message: str
) -> None:
    stderr = _template_fails(helm, values_dir / "a100-l4.yaml", pair)
    assert message in stderr
    assert "run `pdserve render` again" in stderr
