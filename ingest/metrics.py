"""The gateway's Prometheus metrics (catalogue: docs/metrics.md), exposed at `GET /metrics` on the gateway's port.

One `GatewayMetrics` per gateway process, on a registry of its own (tests build as many as they like). Label
values are bounded: the route is the matched route template (or `other`), never the raw path; no product id or
request id is ever a label.

The per-request families (requests, their duration, the reply wait) are `telemetry.metrics` hot-path metrics,
updated without a lock or a label lookup: the edge records each answer once it is written
(`ingest.edge.EdgeProtocol.log_access`), the reply router each reply's wait. The rest are prometheus-client's.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from telemetry.metrics import CounterChild, HistogramChild, HotMetrics, role_registry

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

# The `method` label: the methods HTTP defines; any other token a client sends is counted as OTHER_METHOD.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
OTHER_METHOD: Final = "other"

# Why a request was answered 503 (the `reason` label of bidengine_gateway_unavailable_total): a backend
# unreachable, the pricing agents too far behind, too many bids in flight here, no pricing agent alive, the XADD
# refused; `connections`: MAX_CONNECTIONS connections open, answered by the edge before any request is read.
UNAVAILABLE_REASONS: Final = (
    "redis",
    "postgres",
    "pricing_lag",
    "in_flight",
    "no_pricing_consumer",
    "publish_failed",
    "connections",
)

GATEWAY_METRICS: web.AppKey[GatewayMetrics] = web.AppKey("gateway_metrics")


class RequestSeries:
    """The children one kind of answer (route, method, status) updates: its count and its route's durations."""

    __slots__ = ("count", "duration")

    def __init__(self, count: CounterChild, duration: HistogramChild) -> None:
        self.count = count
        self.duration = duration


class GatewayMetrics:
    """The gateway's registry. `enabled` False (METRICS_ENABLED=false): the per-request metrics are not recorded
    (the edge installs no recorder, the handler and the reply router skip their updates); `/metrics` still
    answers, with the process metrics and whatever is recorded off the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None, *, enabled: bool = True) -> None:
        self.registry = registry if registry is not None else role_registry()
        self.enabled = enabled
        hot = HotMetrics()
        self.http_requests = hot.counter(
            "bidengine_http_requests",
            "HTTP requests answered by the gateway, by route template, method and status code.",
            ("route", "method", "status"),
        )
        self.http_request_duration = hot.histogram(
            "bidengine_http_request_duration_seconds",
            "Time from the request's arrival to its answer, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
        )
        self.reply_wait = hot.histogram(
            "bidengine_gateway_reply_wait_seconds",
            "Time from publishing a bid on bids:requests to its reply (or to the reply timeout).",
            buckets=LATENCY_BUCKETS,
        ).labels()
        self.registry.register(hot)
        self.bids_in_flight = Gauge(
            "bidengine_gateway_bids_in_flight",
            "Bids published by this gateway and waiting for the pricing agent's reply.",
            registry=self.registry,
        )
        self.unavailable = Counter(
            "bidengine_gateway_unavailable",
            "Requests answered 503 (with Retry-After), by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.reply_timeouts = Counter(
            "bidengine_gateway_reply_timeouts",
            "Bids answered 504: accepted but not confirmed within REPLY_TIMEOUT_S.",
            registry=self.registry,
        )
        # Every reason is a series from the start (rate() sees the first 503), bound once.
        self.unavailable_by_reason = {reason: self.unavailable.labels(reason) for reason in UNAVAILABLE_REASONS}
        # (aiohttp's route object or None, method, status) -> what that answer updates; see `series`.
        self.answers: dict[tuple[object, str, int], RequestSeries] = {}
        self._refused: dict[int, CounterChild] = {}

    def series(self, route: object, method: str, status: int) -> RequestSeries:
        """The children one kind of answer updates (`route`: aiohttp's matched route, None when there is none),
        made on its first occurrence and kept: the edge looks them up in `answers` by the same key."""
        resource = getattr(route, "resource", None)
        label = method if method in METHODS else OTHER_METHOD
        template = self.route_label(getattr(resource, "canonical", None))
        series = RequestSeries(
            self.http_requests.labels(template, label, str(status)), self.http_request_duration.labels(template)
        )
        if method in METHODS:  # a method token outside HTTP's is counted, never kept as a key of its own
            self.answers[(route, method, status)] = series
        return series

    def answered(self, route: object, method: str, status: int, seconds: float) -> None:
        """One request answered (what the edge's `log_access` does inline)."""
        series = self.answers.get((route, method, status)) or self.series(route, method, status)
        series.count.value += 1
        series.duration.observe(seconds)

    def refused_by_edge(self, status: int) -> None:
        """An answer the edge wrote itself before any request existed (408, 431, 503 for too many connections):
        counted as route and method `other`; no duration (no request started)."""
        child = self._refused.get(status)
        if child is None:
            child = self._refused[status] = self.http_requests.labels(OTHER_ROUTE, OTHER_METHOD, str(status))
        child.inc()
        if status == 503:
            self.unavailable_by_reason["connections"].inc()

    @staticmethod
    def route_label(template: str | None) -> str:
        """The `route` label of a request: its route template when it is one of ours, else `other`."""
        template = ROUTE_ALIASES.get(template or "", template)
        return template if template in ROUTES else OTHER_ROUTE

    async def expose(self, _request: web.Request) -> web.Response:
        """`GET /metrics`: the Prometheus text exposition of this gateway's registry."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
