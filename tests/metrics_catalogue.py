"""Every role's metric registry, built from the metric modules, and the series names each exposes.

The chart's alerts and dashboard and docs/metrics.md are checked against these names, so none of them can refer
to a metric the code does not define.
"""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ingest.metrics import GatewayMetrics
from monitor.metrics import MonitorMetrics
from processors.metrics import AuditMetrics, PricingMetrics
from redis_streams.metrics import GroupStateCollector
from schema import keys

# Nothing listens there: registering and describing the collector must not need Redis.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
AUDIT_DEAD_LETTER = keys.AUDIT_DEAD_LETTER

# Suffixes of the series prometheus-client writes for each metric type (the family name is the base).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def group_collector() -> GroupStateCollector:
    return GroupStateCollector(redis.Redis.from_url(UNREACHABLE_REDIS, socket_connect_timeout=0.5), alive_ms=5_000)


def role_registries() -> dict[str, CollectorRegistry]:
    pricing = PricingMetrics().registry
    pricing.register(group_collector())
    audit = AuditMetrics(dead_letter_stream=AUDIT_DEAD_LETTER).registry
    audit.register(group_collector())
    return {
        "gateway": GatewayMetrics().registry,
        "pricing-agent": pricing,
        "audit-agent": audit,
        "monitor": MonitorMetrics().registry,
    }


def families(registry: CollectorRegistry) -> list[Metric]:
    return list(registry.collect())


def series_names(metric: Metric) -> set[str]:
    return {metric.name + suffix for suffix in SERIES_SUFFIXES.get(metric.type, ("",))}


def exposed_series() -> dict[str, str]:
    """Every series name any role exposes -> the role exposing it (first role wins for shared ones)."""
    exposed: dict[str, str] = {}
    for role, registry in role_registries().items():
        for metric in families(registry):
            for name in series_names(metric):
                exposed.setdefault(name, role)
    return exposed


def product_families() -> dict[str, tuple[Metric, set[str]]]:
    """The product's own families (bidengine_*): name -> (family, roles exposing it)."""
    found: dict[str, tuple[Metric, set[str]]] = {}
    for role, registry in role_registries().items():
        for metric in families(registry):
            if metric.name.startswith("bidengine_"):
                found.setdefault(metric.name, (metric, set()))[1].add(role)
    return found
