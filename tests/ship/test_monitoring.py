"""The chart's monitoring objects: rendered for the three values files (and the ServiceMonitor and KEDA variants),
checked against their CRDs, alert and dashboard queries parsed by a PromQL parser and promtool, every metric
they name defined by the metric modules, every alert with a runbook section, and the alerts' logic unit-tested.

CRDs: the custom resources are validated with pydantic models generated from the upstream CRDs' OpenAPI schemas
(cloudcoil-models-prometheus-operator: monitoring.coreos.com/v1 PodMonitor, ServiceMonitor, PrometheusRule;
cloudcoil-models-keda: keda.sh/v1alpha1 ScaledObject), so types, enums, required fields and patterns (durations)
are the CRDs'. The models ignore unknown fields, so a manifest must also survive a round trip unchanged: a
misspelt field fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import promql_parser
import pydantic
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from schema import keys
from tests.metrics_catalogue import exposed_series

from .conftest import ROOT, VENV_BIN
from .test_helm import CHART, NAMESPACE, RELEASE, Manifest, of_kind, render_chart, rendered, values_of

CRD_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "PodMonitor": prometheus_operator.PodMonitor,
    "ServiceMonitor": prometheus_operator.ServiceMonitor,
    "PrometheusRule": prometheus_operator.PrometheusRule,
    "ScaledObject": keda.ScaledObject,
}
COMPONENTS = ("gateway", "pricing-agent", "audit-agent", "monitor")
# Prometheus' own series the alerts may use besides ours.
PROMETHEUS_SERIES = {"up"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": NAMESPACE, "${datasource}": "prometheus"}
SERVICE_MONITORS = {"monitoring": {"scrape": {"enabled": True, "kind": "ServiceMonitor"}}}
KEDA = {
    "components": {
        "pricingAgent": {"autoscaling": {"enabled": False}, "keda": {"enabled": True}},
        "auditAgent": {"autoscaling": {"enabled": False}, "keda": {"enabled": True}},
    }
}


@cache
def variant(name: str) -> tuple[Manifest, ...]:
    if name == "service-monitors":
        return tuple(render_chart(SERVICE_MONITORS))
    if name == "keda":
        return tuple(render_chart(KEDA))
    return rendered(name)


def custom_resources(docs: tuple[Manifest, ...]) -> list[Manifest]:
    return [d for d in docs if d["kind"] in CRD_MODELS]


def crd_errors(doc: Manifest) -> list[str]:
    model = CRD_MODELS[doc["kind"]]
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        return [f"{doc['kind']}/{doc['metadata']['name']}: {error['loc']}: {error['msg']}" for error in exc.errors()]
    if parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") != doc:
        return [f"{doc['kind']}/{doc['metadata']['name']}: fields the CRD does not define (lost in a round trip)"]
    return []


def rules(docs: tuple[Manifest, ...]) -> list[dict[str, Any]]:
    return [rule for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for rule in g["rules"]]


def dashboard(docs: tuple[Manifest, ...]) -> dict[str, Any]:
    configmap = of_kind(docs, "ConfigMap")[f"{RELEASE}-dashboard"]
    loaded: dict[str, Any] = json.loads(configmap["data"]["bidengine.json"])
    return loaded


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def grafana_free(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def series_in(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.fixture(params=["default", "staging", "production", "service-monitors", "keda"])
def docs(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return variant(request.param)


# --- Switched by values ------------------------------------------------------------------------------------------


def test_off_by_default_on_in_staging_and_production() -> None:
    assert not custom_resources(variant("default"))
    assert f"{RELEASE}-dashboard" not in of_kind(variant("default"), "ConfigMap")
    for name in ("staging", "production"):
        kinds = {d["kind"] for d in custom_resources(variant(name))}
        assert kinds == {"PodMonitor", "PrometheusRule"}, name
        assert f"{RELEASE}-dashboard" in of_kind(variant(name), "ConfigMap")


def test_staging_pages_nobody() -> None:
    assert {rule["labels"]["severity"] for rule in rules(variant("staging"))} == {"warning"}
    assert {rule["labels"]["environment"] for rule in rules(variant("staging"))} == {"staging"}
    assert {rule["labels"]["severity"] for rule in rules(variant("production"))} == {"critical", "warning"}


# --- CRD schemas -------------------------------------------------------------------------------------------------


def test_custom_resources_match_their_crds(docs: tuple[Manifest, ...]) -> None:
    failures = [error for doc in custom_resources(docs) for error in crd_errors(doc)]
    assert not failures, "\n".join(failures)


def test_crd_validation_has_teeth() -> None:
    (monitor, *_) = of_kind(variant("production"), "PodMonitor").values()
    misspelt = copy.deepcopy(monitor)
    misspelt["spec"]["podMetricsEndpoint"] = misspelt["spec"].pop("podMetricsEndpoints")
    assert crd_errors(misspelt)
    bad_duration = copy.deepcopy(monitor)
    bad_duration["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    assert crd_errors(bad_duration)
    (scaled, *_) = of_kind(variant("keda"), "ScaledObject").values()
    no_triggers = copy.deepcopy(scaled)
    del no_triggers["spec"]["triggers"]
    assert crd_errors(no_triggers)


# --- Scraping ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["production", "service-monitors"])
def test_one_monitor_per_component_on_a_real_port(name: str) -> None:
    docs = variant(name)
    kind = "ServiceMonitor" if name == "service-monitors" else "PodMonitor"
    monitors = of_kind(docs, kind)
    assert set(monitors) == {f"{RELEASE}-{c}" for c in COMPONENTS}
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")
    for component in COMPONENTS:
        monitor = monitors[f"{RELEASE}-{component}"]["spec"]
        pod = deployments[f"{RELEASE}-{component}"]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        selector = monitor["selector"]["matchLabels"]
        assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        if kind == "PodMonitor":
            assert selector.items() <= pod["metadata"]["labels"].items()
            (endpoint,) = monitor["podMetricsEndpoints"]
        else:
            (service,) = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            (endpoint,) = monitor["endpoints"]
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] == ("http" if component == "gateway" else "metrics")
        assert endpoint["port"] in ports, f"{component}: no container port {endpoint['port']}"
        assert monitor["jobLabel"] == "app.kubernetes.io/component"  # job="<component>", as the alerts expect


def test_agents_serve_metrics_on_the_settings_ports() -> None:
    """The container port is the one the process listens on: METRICS_HOST/…_METRICS_PORT from the same value."""
    from schema.settings import Settings

    defaults = Settings()
    expected = {
        "pricing-agent": ("PRICING_METRICS_PORT", defaults.pricing_metrics_port),
        "audit-agent": ("AUDIT_METRICS_PORT", defaults.audit_metrics_port),
        "monitor": ("MONITOR_METRICS_PORT", defaults.monitor_metrics_port),
    }
    deployments = of_kind(variant("default"), "Deployment")
    for component, (variable, port) in expected.items():
        (container,) = deployments[f"{RELEASE}-{component}"]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - scraped on the pod IP
        assert env[variable] == str(port)
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]


# --- KEDA --------------------------------------------------------------------------------------------------------


def test_keda_scales_each_agent_on_its_group_instead_of_the_hpa() -> None:
    docs = variant("keda")
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == {f"{RELEASE}-pricing-agent", f"{RELEASE}-audit-agent"}
    assert not {f"{RELEASE}-pricing-agent", f"{RELEASE}-audit-agent"} & set(of_kind(docs, "HorizontalPodAutoscaler"))
    deployments = of_kind(docs, "Deployment")
    groups = {
        "pricing-agent": (keys.BID_REQUESTS, keys.PRICING_GROUP),
        "audit-agent": (keys.BIDS_PRICED, keys.AUDIT_GROUP),
    }
    for agent, (stream, group) in groups.items():
        spec = scaled[f"{RELEASE}-{agent}"]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"], "KEDA's HPA owns the replicas"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        assert (metadata["stream"], metadata["consumerGroup"]) == (stream, group)
        assert int(metadata["lagCount"]) > 0
        assert metadata["address"] == f"{RELEASE}-redis:6379"
        # The in-cluster password, from the target container's environment.
        (container,) = deployments[spec["scaleTargetRef"]["name"]]["spec"]["template"]["spec"]["containers"]
        assert metadata["passwordFromEnv"] in {e["name"] for e in container["env"]}


def test_keda_and_the_hpa_are_exclusive() -> None:
    both = {"components": {"pricingAgent": {"keda": {"enabled": True}}}}
    with pytest.raises(helm_python.HelmError, match="alternatives"):
        render_chart(both)


def test_keda_with_a_managed_redis_needs_its_address() -> None:
    managed = {**values_of("production"), **KEDA}
    with pytest.raises(helm_python.HelmError, match=r"keda\.redis\.address"):
        render_chart(managed)
    docs = render_chart(
        {**managed, "keda": {"redis": {"address": "cache.example:6379", "enableTLS": True, "authenticationRef": "r"}}}
    )
    for scaled in of_kind(docs, "ScaledObject").values():
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["authenticationRef"] == {"name": "r"}
        assert "passwordFromEnv" not in trigger["metadata"]
        assert not crd_errors(scaled)


# --- Alerts ------------------------------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "BidengineGatewayServerErrors",  # 5xx rate
    "BidengineGatewayUnavailable",  # 503 rate
    "BidengineGatewayReplyTimeouts",
    "BidengineGatewayLatencyHigh",  # p99 over target
    "BidenginePricingLagHigh",
    "BidengineGroupLagGrowing",  # pricing lag growing
    "BidengineNoLivePricingConsumer",
    "BidengineDeadLettersGrowing",
    "BidengineMonitorPollsFailing",
    "BidengineDailyAuditMissing",
}


def runbook_anchors() -> set[str]:
    text = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    return {heading.strip().lower() for heading in re.findall(r"^## (.+)$", text, re.MULTILINE)}


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    alerts = rules(variant("production"))
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    anchors = runbook_anchors()
    runbook = values_of("default") or yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    base = runbook["monitoring"]["alerts"]["runbookUrl"]
    assert base.endswith("/docs/runbook.md")
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        url, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert url == base, rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbook.md has no section ## {rule['alert']}"
    assert anchors - {name.lower() for name in names} <= {"before you start"}, "a runbook section without an alert"


def test_alert_expressions_parse_and_name_defined_metrics() -> None:
    exposed = exposed_series()
    for rule in rules(variant("production")):
        expr = rule["expr"]
        try:
            used = series_in(expr)
        except ValueError as exc:
            pytest.fail(f"{rule['alert']}: {exc}\n{expr}")
        assert f'namespace="{NAMESPACE}"' in expr, f"{rule['alert']} is not scoped to the release's namespace"
        undefined = used - set(exposed) - PROMETHEUS_SERIES
        assert not undefined, f"{rule['alert']} uses metrics no role defines: {undefined}"


def test_promql_check_has_teeth() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(bidengine_http_requests_total[5m])")
    assert "bidengine_nope_total" not in exposed_series()


def promtool() -> str:
    """promtool (Debian's `prometheus` package; .ci/run installs the binary). Outside CI a missing one skips."""
    found = shutil.which("promtool") or (str(VENV_BIN / "promtool") if (VENV_BIN / "promtool").exists() else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (.ci/run installs it)", pytrace=False)
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return found


def write_rules(path: Path, docs: tuple[Manifest, ...], *, annotations: bool = True) -> None:
    groups = [g for d in docs if d["kind"] == "PrometheusRule" for g in copy.deepcopy(d["spec"]["groups"])]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize("name", ["staging", "production"])
def test_promtool_checks_the_rules(name: str, tmp_path: Path) -> None:
    """Prometheus' own parser and rule checks, annotations' templates included."""
    binary = promtool()
    write_rules(tmp_path / "rules.yaml", variant(name))
    result = subprocess.run(
        [binary, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules(variant(name)))} rules found" in result.stdout


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """tests/ship/alerts_test.yaml: synthetic series in, the expected alerts out (promtool test rules)."""
    binary = promtool()
    thresholds = {"auditMaxAgeSeconds": 600, "monitorStaleSeconds": 600}
    values = values_of("production")
    values["monitoring"]["alerts"] = {**values["monitoring"]["alerts"], **thresholds, "alertLabels": {}}
    write_rules(tmp_path / "rules.yaml", tuple(render_chart(values)), annotations=False)
    shutil.copy(Path(__file__).with_name("alerts_test.yaml"), tmp_path / "alerts_test.yaml")
    result = subprocess.run(
        [binary, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dashboard ---------------------------------------------------------------------------------------------------


def test_dashboard_configmap_for_the_sidecar() -> None:
    configmap = of_kind(variant("production"), "ConfigMap")[f"{RELEASE}-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard(variant("production"))
    assert board["uid"] == "bidengine-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    custom = render_chart({"monitoring": {"dashboard": {"enabled": True, "labels": {"dashboards": "bid"}}}})
    assert of_kind(tuple(custom), "ConfigMap")[f"{RELEASE}-dashboard"]["metadata"]["labels"]["dashboards"] == "bid"


def test_dashboard_queries_parse_and_name_defined_metrics() -> None:
    exposed = exposed_series()
    used: set[str] = set()
    for title, expr in dashboard_queries(dashboard(variant("production"))):
        try:
            names = series_in(grafana_free(expr))
        except ValueError as exc:
            pytest.fail(f"panel {title!r}: {exc}\n{expr}")
        undefined = names - set(exposed) - PROMETHEUS_SERIES
        assert not undefined, f"panel {title!r} uses metrics no role defines: {undefined}"
        used |= names
    # The panels on-call looks at first.
    for metric in (
        "bidengine_http_requests_total",
        "bidengine_http_request_duration_seconds_bucket",
        "bidengine_gateway_unavailable_total",
        "bidengine_gateway_bids_in_flight",
        "bidengine_stream_group_lag",
        "bidengine_stream_group_pending",
        "bidengine_stream_group_consumers",
        "bidengine_pricing_batch_size_bucket",
        "bidengine_pricing_store_duration_seconds_bucket",
        "bidengine_dead_letter_entries",
        "bidengine_audit_bids_flagged_total",
        "bidengine_monitor_last_success_timestamp_seconds",
    ):
        assert metric in used, f"no panel shows {metric}"
