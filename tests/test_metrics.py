"""The metric catalogue: Prometheus naming conventions, bounded labels, the issue's minimum set, and
docs/metrics.md listing exactly the metrics the code defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingest.metrics import OTHER_ROUTE, GatewayMetrics
from monitor.metrics import MonitorMetrics
from processors.metrics import PricingMetrics
from tests.metrics_catalogue import product_families, role_registries

ROOT = Path(__file__).resolve().parents[1]
# Label names allowed anywhere: each has a small, known set of values.
BOUNDED_LABELS = {"route", "method", "status", "reason", "outcome", "stream", "group"}

REQUIRED = {
    "gateway": {
        "bidengine_http_requests": ("counter", {"route", "method", "status"}),
        "bidengine_http_request_duration_seconds": ("histogram", {"route"}),
        "bidengine_gateway_bids_in_flight": ("gauge", set()),
        "bidengine_gateway_reply_wait_seconds": ("histogram", set()),
        "bidengine_gateway_unavailable": ("counter", {"reason"}),
        "bidengine_gateway_reply_timeouts": ("counter", set()),
    },
    "pricing-agent": {
        "bidengine_pricing_batches": ("counter", set()),
        "bidengine_pricing_batch_size": ("histogram", set()),
        "bidengine_pricing_store_duration_seconds": ("histogram", set()),
        "bidengine_pricing_replies": ("counter", {"outcome"}),
        "bidengine_dead_letters": ("counter", {"stream"}),
        "bidengine_stream_reclaimed": ("counter", {"stream", "group"}),
        "bidengine_stream_redeliveries": ("counter", {"stream", "group"}),
        "bidengine_stream_group_lag": ("gauge", {"stream", "group"}),
        "bidengine_stream_group_pending": ("gauge", {"stream", "group"}),
        "bidengine_stream_group_consumers": ("gauge", {"stream", "group"}),
        "bidengine_dead_letter_entries": ("gauge", {"stream"}),
    },
    "audit-agent": {
        "bidengine_audit_bids_reviewed": ("counter", set()),
        "bidengine_audit_bids_flagged": ("counter", set()),
        "bidengine_audit_duplicates_skipped": ("counter", set()),
        "bidengine_audit_report_last_success_timestamp_seconds": ("gauge", set()),
        "bidengine_stream_group_consumers": ("gauge", {"stream", "group"}),
    },
    "monitor": {
        "bidengine_monitor_polls": ("counter", {"outcome"}),
        "bidengine_monitor_items_published": ("counter", set()),
        "bidengine_monitor_items_rejected": ("counter", set()),
        "bidengine_monitor_last_success_timestamp_seconds": ("gauge", set()),
    },
}


def label_names(registry: CollectorRegistry, family: str) -> set[str]:
    """Label names of a family, read from the exposition (families without samples have none to show)."""
    text = generate_latest(registry).decode()
    names: set[str] = set()
    for match in re.finditer(rf"^{family}(?:_total|_bucket|_count|_sum)?\{{([^}}]*)\}}", text, re.MULTILINE):
        names.update(part.split("=")[0] for part in match.group(1).split(",") if part)
    return names - {"le"}


@pytest.mark.parametrize("role", list(REQUIRED))
def test_every_required_metric_exists_with_its_type(role: str) -> None:
    registry = role_registries()[role]
    families = {m.name: m for m in registry.collect()}
    for name, (kind, _labels) in REQUIRED[role].items():
        assert name in families, f"{role} does not expose {name}"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"


def test_labels_of_the_required_metrics() -> None:
    """Label names as Prometheus sees them: each metric observed once so every family has a sample."""
    gateway = GatewayMetrics()
    gateway.http_requests.labels("/api/bid/", "POST", "200").inc()
    gateway.http_request_duration.labels("/api/bid/").observe(0.004)
    assert label_names(gateway.registry, "bidengine_http_requests") == {"route", "method", "status"}
    assert label_names(gateway.registry, "bidengine_http_request_duration_seconds") == {"route"}
    assert label_names(gateway.registry, "bidengine_gateway_unavailable") == {"reason"}
    pricing = PricingMetrics()
    assert label_names(pricing.registry, "bidengine_pricing_replies") == {"outcome"}
    assert label_names(pricing.registry, "bidengine_stream_reclaimed") == {"stream", "group"}
    assert label_names(pricing.registry, "bidengine_dead_letters") == {"stream"}
    assert label_names(MonitorMetrics().registry, "bidengine_monitor_polls") == {"outcome"}


def test_names_follow_prometheus_conventions() -> None:
    for name, (metric, roles) in product_families().items():
        assert re.fullmatch(r"bidengine_[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total"), f"{name}: prometheus-client appends _total to counters itself"
        if metric.type == "histogram" and ("duration" in name or "wait" in name):
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
        if "timestamp" in name:
            assert name.endswith("_timestamp_seconds"), name
        assert not re.search(r"_(ms|milliseconds|minutes|bytes_kb)$", name), f"{name}: base units only"
        assert metric.documentation, f"{name} ({roles}) has no help text"


def test_labels_are_bounded() -> None:
    for role, registry in role_registries().items():
        text = generate_latest(registry).decode()
        for line in text.splitlines():
            if line.startswith("bidengine_") and "{" in line:
                labels = {part.split("=")[0] for part in line[line.index("{") + 1 : line.index("}")].split(",")}
                assert labels - {"le"} <= BOUNDED_LABELS, f"{role}: {line}"


def test_known_label_values_are_exported_at_zero() -> None:
    text = generate_latest(GatewayMetrics().registry).decode()
    for reason in ("redis", "postgres", "pricing_lag", "in_flight", "no_pricing_consumer", "publish_failed"):
        assert f'bidengine_gateway_unavailable_total{{reason="{reason}"}} 0.0' in text
    pricing = generate_latest(PricingMetrics().registry).decode()
    for outcome in ("stored", "replayed", "conflict", "rejected"):
        assert f'bidengine_pricing_replies_total{{outcome="{outcome}"}} 0.0' in pricing
    assert 'bidengine_dead_letters_total{stream="bids:dead"} 0.0' in pricing
    assert 'bidengine_stream_redeliveries_total{group="pricing",stream="bids:requests"} 0.0' in pricing


def test_route_label_is_a_template_never_a_path() -> None:
    assert GatewayMetrics.route_label("/api/bid/") == "/api/bid/"
    assert GatewayMetrics.route_label("/api/bid") == "/api/bid/"
    assert GatewayMetrics.route_label("/api/bid/123") == OTHER_ROUTE
    assert GatewayMetrics.route_label(None) == OTHER_ROUTE


def test_registries_are_independent() -> None:
    """One registry per role object: tests (and two roles in one process) never collide on names."""
    first, second = GatewayMetrics(), GatewayMetrics()
    first.reply_timeouts.inc()
    assert "bidengine_gateway_reply_timeouts_total 1.0" in generate_latest(first.registry).decode()
    assert "bidengine_gateway_reply_timeouts_total 0.0" in generate_latest(second.registry).decode()


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's tables: exposed name -> (type, labels)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for match in re.finditer(r"^\| `(bidengine_[a-z0-9_]+)` \| (\w+) \|([^|]*)\|", text, re.MULTILINE):
        name, kind, labels = match.groups()
        rows[name] = (kind, set(re.findall(r"`(\w+)`", labels)))
    return rows


def test_docs_list_exactly_the_defined_metrics() -> None:
    documented = documented_metrics()
    defined = {}
    for name, (metric, _roles) in product_families().items():
        exposed = f"{name}_total" if metric.type == "counter" else name
        defined[exposed] = metric.type
    only_documented, only_defined = sorted(set(documented) - set(defined)), sorted(set(defined) - set(documented))
    assert not only_documented, f"documented, not defined: {only_documented}"
    assert not only_defined, f"defined, not documented: {only_defined}"
    for name, (kind, _labels) in documented.items():
        assert kind == defined[name], f"docs/metrics.md says {name} is a {kind}"
    for role_metrics in REQUIRED.values():
        for name, (kind, labels) in role_metrics.items():
            exposed = f"{name}_total" if kind == "counter" else name
            assert documented[exposed][1] == labels, f"docs/metrics.md labels of {exposed}"
