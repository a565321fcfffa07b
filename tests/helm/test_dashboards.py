"""The Grafana dashboard and the PodMonitors the chart ships: every PromQL query names a metric a
real gateway or a real vLLM 0.32 exports, and `helm template` renders the ConfigMap and the
monitors so that they select the pods the chart makes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdserve.helm.values import CHART_DIR
from pdserve.stack import stack
from tests.helm.conftest import Template
from tests.support import PROFILES

DASHBOARD = CHART_DIR / "dashboards" / "pdserve-overview.json"
VLLM_METRICS = Path(__file__).parents[1] / "pools" / "data" / "vllm-0.32-cpu-metrics.txt"
MONITORING_ON = (
    "monitoring.dashboard.enabled=true",
    "monitoring.podMonitors.pools=true",
    "monitoring.podMonitors.gateway=true",
)
# PromQL words that are not metric names: functions and aggregations are told apart by the "("
# after them; these are the keywords and modifiers
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset"}  # fmt: skip
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                   "_created"), "gauge": ("",), "summary": ("_sum", "_count", "")}  # fmt: skip


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges ($__rate_interval)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        end = match.end()
        if word in PROMQL_WORDS or text[end:].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def sample_names(exposition: str) -> set[str]:
    """Every sample name an exposition can carry, from its families' names and types (a
    labelled metric with no sample yet still has its family)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.mark.unit
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (route, status) (rate(pdserve_requests_total{route="local"}[5m]))',
         {"pdserve_requests_total"}),
        ("histogram_quantile(0.99, sum by (le, pool) (rate(vllm:nixl_xfer_time_seconds_bucket"
         "[$__rate_interval])))", {"vllm:nixl_xfer_time_seconds_bucket"}),
        ("sum(rate(a_total[1m])) / sum by (pool) (rate(b_total[1m]))", {"a_total", "b_total"}),
        ("max by (pool) (vllm:kv_cache_usage_perc) > bool 0.9", {"vllm:kv_cache_usage_perc"}),
    ],
)  # fmt: skip
def test_metric_names_of_a_query(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


@pytest.fixture(scope="module")
def gateway_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The sample names of a real gateway's /metrics after requests on both routes."""
    env = {"PDSERVE_ADMIN_TOKEN": "dash", "PDSERVE_API_KEYS": ""}
    log_dir = tmp_path_factory.mktemp("dashboards")
    with stack(PROFILES / "gw-disaggregated.yaml", env=env, log_dir=log_dir) as running:
        with httpx.Client(base_url=running.base_url, timeout=60) as client:
            for prompt in ("Say hello.", "How vexingly quick daft zebras jump! " * 5):
                body = {"model": "tiny", "prompt": prompt, "max_tokens": 4, "stream": True}
                with client.stream("POST", "/v1/completions", json=body) as answer:
                    assert answer.status_code == 200
                    answer.read()
            text = client.get("/metrics").text
        yield sample_names(text)


@pytest.mark.integration
def test_every_query_names_a_metric_the_gateway_or_vllm_exports(
    gateway_metrics: set[str],
) -> None:
    vllm = sample_names(VLLM_METRICS.read_text())
    assert "vllm:nixl_xfer_time_seconds_bucket" in vllm  # the capture is a P/D worker's
    exported = gateway_metrics | vllm
    missing = {
        name: expr for expr in queries() for name in metric_names(expr) if name not in exported
    }
    assert not missing, missing
    used = {name for expr in queries() for name in metric_names(expr)}
    # the overview covers both sides: the gateway's routes and pools, vLLM's KV transfer
    assert {"pdserve_requests_total", "pdserve_pool_desired_replicas"} <= used
    assert {"vllm:nixl_xfer_time_seconds_bucket", "vllm:prompt_tokens_by_source_total"} <= used


@pytest.mark.unit
def test_dashboard_is_one_grafana_dashboard_on_a_prometheus_variable() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.integration
def test_helm_template_renders_dashboard_and_a_podmonitor_per_pool(
    template: Template, values_dir: Path
) -> None:
    objects = template(values_dir / "disaggregated.yaml", sets=MONITORING_ON)
    [config_map] = [o for o in _by_kind(objects, "ConfigMap").values() if "grafana_dashboard"
                    in o["metadata"]["labels"]]  # fmt: skip
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["pdserve-overview.json"]) == dashboard()
    monitors = _by_kind(objects, "PodMonitor")
    deployments = _by_kind(objects, "Deployment")
    assert set(monitors) == set(deployments)  # a monitor per pool + the gateway's
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        pod = deployments[name]["spec"]["template"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    pools = {m["metadata"]["labels"].get("pdserve.io/pool") for m in monitors.values()} - {None}
    assert pools == {"prefill", "decode"}


@pytest.mark.integration
def test_monitoring_objects_are_off_by_default(template: Template, values_dir: Path) -> None:
    objects = template(values_dir / "disaggregated.yaml")
    assert not _by_kind(objects, "PodMonitor")
    assert not [o for o in objects if o["metadata"]["name"].endswith("-dashboard")]
