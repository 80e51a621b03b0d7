"""The gateway's Prometheus metrics (catalogue: docs/metrics.md), exposed at `GET /metrics` on the gateway's port.

One `GatewayMetrics` per gateway process, on a registry of its own (tests build as many as they like). Label
values are bounded: the route is the matched route template (or `other`), never the raw path; no product id or
request id is ever a label.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# A bid takes a few milliseconds end to end (docs/benchmarks.md: p50 ~5 ms, p99 ~13 ms under load); finer
# buckets from 1 to 50 ms place the p50/p99 precisely, the tail up to REPLY_TIMEOUT_S (5 s) shows the 504s.
LATENCY_BUCKETS: Final = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# The `route` label: the gateway's route templates; any other path is counted as OTHER_ROUTE.
ROUTES: Final = ("/api/bid/", "/health", "/ready", "/metrics", "/openapi.json")
OTHER_ROUTE: Final = "other"
# The legacy spelling without the trailing slash is the same route.
ROUTE_ALIASES: Final = {"/api/bid": "/api/bid/"}

# Why a bid was answered 503 (the `reason` label of bidengine_gateway_unavailable_total).
UNAVAILABLE_REASONS: Final = ("redis", "postgres", "pricing_lag", "in_flight", "no_pricing_consumer", "publish_failed")


def role_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics every role exposes."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else role_registry()
        self.http_requests = Counter(
            "bidengine_http_requests",
            "HTTP requests answered by the gateway, by route template, method and status code.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "bidengine_http_request_duration_seconds",
            "Time from the request's arrival to its answer, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bids_in_flight = Gauge(
            "bidengine_gateway_bids_in_flight",
            "Bids published by this gateway and waiting for the pricing agent's reply.",
            registry=self.registry,
        )
        self.reply_wait = Histogram(
            "bidengine_gateway_reply_wait_seconds",
            "Time from publishing a bid on bids:requests to its reply (or to the reply timeout).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "bidengine_gateway_unavailable",
            "Bids answered 503 (with Retry-After), by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.reply_timeouts = Counter(
            "bidengine_gateway_reply_timeouts",
            "Bids answered 504: accepted but not confirmed within REPLY_TIMEOUT_S.",
            registry=self.registry,
        )
        for reason in UNAVAILABLE_REASONS:  # every reason is a series from the start: rate() sees the first 503
            self.unavailable.labels(reason)

    @staticmethod
    def route_label(template: str | None) -> str:
        """The `route` label of a request: its route template when it is one of ours, else `other`."""
        template = ROUTE_ALIASES.get(template or "", template)
        return template if template in ROUTES else OTHER_ROUTE

    async def expose(self, _request: web.Request) -> web.Response:
        """`GET /metrics`: the Prometheus text exposition of this gateway's registry."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
