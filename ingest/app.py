"""The gateway's HTTP application: `POST /api/bid/`, `GET /health`, `GET /ready`.

The legacy contract: `POST /api/bid/` with `{"product_id", "current_cpc", "target_roas"}` answers
`200 {"adjusted_cpc", "bid_id"}` once the bid is committed, or `400 {"errors": [...]}`. Beyond it:
408 (body not received in time), 413 (body too large, sent or decompressed), 415 (not JSON, or a
Content-Encoding other than gzip/deflate), 422 (Idempotency-Key reused for another bid), 503 with
Retry-After (a backend down, no pricing agent alive, or the pipeline too far behind), 504 with the request id
(no reply in time; retrying with the same Idempotency-Key is safe). Every error is `{"errors": [...]}` JSON
(ingest/errors.py); the application is served through `ingest.edge`, which adds read deadlines, half-close
and JSON errors for what aiohttp answers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ingest.backends import BackendMonitor
from ingest.body import BodyError, content_coding, read_body
from ingest.errors import error_response
from ingest.metrics import GATEWAY_METRICS, GatewayMetrics
from ingest.publisher import PublishFailed, StreamPublisher
from ingest.replies import ReplyRouter, ReplyTimeout
from ingest.validation import BidValidationError, parse_bid
from redis_streams.retry import Backoff
from schema import keys
from schema.events import BidReply, BidRequested
from schema.http_api import openapi_document
from schema.settings import Settings
from telemetry.logs import REQUEST_ID

log = logging.getLogger(__name__)

# Request ids derived from an Idempotency-Key: the same key always names the same stored bid.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c2a52-3f5e-4d0b-9a51-1c7e0a3b8d21")
MAX_IDEMPOTENCY_KEY = 255

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


# A version-4 UUID's fixed bits: version 4 (bits 76-79), RFC 4122 variant (bits 62-63), as uuid.UUID sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # what web.json_response sends


def bid_response(adjusted_cpc: float, bid_id: int, request_id: str) -> web.Response:
    """The 200 of a stored bid: the bytes `web.json_response` would send for {"adjusted_cpc", "bid_id"}, without
    building a dict and running the JSON encoder for two numbers (json.dumps writes a float as its repr)."""
    body = f'{{"adjusted_cpc": {adjusted_cpc!r}, "bid_id": {bid_id}}}'.encode()
    return web.Response(body=body, headers={"X-Request-Id": request_id, "Content-Type": JSON_CONTENT_TYPE})


def request_id_for(idempotency_key: str | None) -> str:
    """A fresh random UUID, or the one the key always maps to (so a retry names the same stored bid)."""
    if idempotency_key is None:
        # random.getrandbits instead of uuid4(): no os.urandom system call per bid; 122 random bits from a
        # generator seeded per process by os.urandom are as collision-free for ids (not secrets). Formatted
        # here rather than through a uuid.UUID object: the same text for a third of the cost.
        digits = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key))


def valid_idempotency_key(key: str) -> bool:
    return 0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()


class Gateway:
    """One gateway process: its reply stream, publisher and view of the backends."""

    def __init__(
        self, settings: Settings, redis: aioredis.Redis, database_url: str, metrics: GatewayMetrics | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics if metrics is not None else GatewayMetrics(enabled=settings.metrics_enabled)
        # None when METRICS_ENABLED is false: the hot path then records nothing.
        self._recorded = self.metrics if self.metrics.enabled else None
        self.id = uuid.uuid4().hex
        self.reply_stream = keys.reply_stream(self.id)
        self.publisher = StreamPublisher(redis, keys.BID_REQUESTS)
        self.replies = ReplyRouter(
            redis,
            self.reply_stream,
            timeout_s=settings.reply_timeout_s,
            read_count=settings.reply_read_count,
            read_block_ms=settings.reply_read_block_ms,
            ttl_s=settings.reply_stream_ttl_s,
            backoff=Backoff.from_settings(settings),
            reply_wait=self.metrics.reply_wait if self.metrics.enabled else None,
        )
        self.metrics.bids_in_flight.set_function(lambda: self.replies.in_flight)
        self.backends = BackendMonitor(redis, database_url, alive_ms=settings.consumer_alive_ms)
        self._reply_ids = itertools.count()

    def unavailable(self, reason: str, code: str) -> web.Response:
        """503 with Retry-After; `code` is the `reason` label of the 503 counter (ingest/metrics.py)."""
        if self._recorded is not None:
            self._recorded.unavailable_by_reason[code].inc()
        return error_response(
            503, [f"Service unavailable: {reason}"], {"Retry-After": str(self.settings.retry_after_s)}
        )

    def refused_from_headers(self, request: web.Request) -> web.Response | None:
        """415 (Content-Type) or 413 (a declared length over the limit), from the headers alone, before any of
        the body is read. An unsupported Content-Encoding (415) is refused by `read_body`, also before reading."""
        # The header as nearly every bidder sends it is accepted without aiohttp parsing it (measured: ~7 µs per
        # request parsed, ~1 µs read); any other spelling (parameters, case) is parsed and judged as before.
        if request.headers.get(hdrs.CONTENT_TYPE) != "application/json" and request.content_type != "application/json":
            return error_response(415, ["Content-Type must be application/json"])
        declared = request.content_length
        if declared is not None and declared > self.settings.max_body_bytes:
            return error_response(413, [f"Request body is larger than {self.settings.max_body_bytes} bytes"])
        return None

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse from the headers when we can, so the client need not send its body."""
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed()  # answered as JSON by the edge (ingest/errors.py)
        refused = self.refused_from_headers(request)
        if refused is not None:
            return refused
        try:
            content_coding(request.headers.get("Content-Encoding"))
        except BodyError as exc:
            return error_response(exc.status, [exc.message], exc.headers)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # what follows is the response proper (as aiohttp's own handler does)
        return None

    async def post_bid(self, request: web.Request) -> web.Response:
        refused = self.refused_from_headers(request)
        if refused is not None:
            return refused
        try:
            body = await read_body(request, self.settings.max_body_bytes)
        except BodyError as exc:
            return error_response(exc.status, [exc.message], exc.headers)
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
            return error_response(
                400, [f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"]
            )
        try:
            bid = parse_bid(body)
        except BidValidationError as exc:
            return error_response(400, exc.errors)
        if request.transport is None:
            # The client is gone (reset) before its bid entered the pipeline: store nothing it cannot learn of.
            return error_response(400, ["The connection was closed before the bid was accepted"])

        refusal = self.backends.status.refusal(self.settings.max_pricing_lag)
        if refusal is None and self.replies.in_flight >= self.settings.max_in_flight:
            refusal = ("in_flight", f"{self.replies.in_flight} bids in flight in this gateway")
        if refusal is not None:
            return self.unavailable(refusal[1], refusal[0])

        request_id = request_id_for(idempotency_key)
        reply_id = str(next(self._reply_ids))
        event = BidRequested(request_id, self.reply_stream, reply_id, bid.product_id, bid.current_cpc, bid.target_roas)
        waiter = self.replies.expect(reply_id)
        self.publisher.publish(event.to_fields(), waiter)
        try:
            reply = await waiter
        except PublishFailed as exc:
            log.warning("publishing a bid failed: %s", exc, extra={REQUEST_ID: request_id})
            return self.unavailable("Redis is unreachable", "publish_failed")
        except ReplyTimeout:
            if self._recorded is not None:
                self._recorded.reply_timeouts.inc()
            log.info(
                "bid accepted but not confirmed within %.1f s: answered 504",
                self.settings.reply_timeout_s,
                extra={REQUEST_ID: request_id},
            )
            return error_response(
                504,
                ["The bid was accepted but not confirmed in time; retry with the same Idempotency-Key"],
                {"X-Request-Id": request_id},
                request_id=request_id,
            )
        finally:
            self.replies.forget(reply_id)
        return self._answer(reply, request_id)

    def _answer(self, reply: BidReply, request_id: str) -> web.Response:
        if reply.error is None and reply.adjusted_cpc is not None and reply.bid_id is not None:
            adjusted_cpc = float(reply.adjusted_cpc)
            if math.isfinite(adjusted_cpc):  # always, for a stored amount; JSON has no literal for the others
                return bid_response(adjusted_cpc, reply.bid_id, request_id)
        headers = {"X-Request-Id": request_id}
        if reply.error == BidReply.IDEMPOTENCY_CONFLICT:
            return error_response(422, ["Idempotency-Key was already used for a different bid"], headers)
        if reply.error is not None or reply.adjusted_cpc is None:
            return error_response(422, ["The bid could not be stored"], headers, request_id=request_id)
        return _json(200, {"adjusted_cpc": float(reply.adjusted_cpc), "bid_id": reply.bid_id}, headers)

    async def health(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def ready(self, _request: web.Request) -> web.Response:
        status = self.backends.status
        problem = status.problem(self.settings.max_pricing_lag)
        body = {
            "status": "ok" if problem is None else "unavailable",
            "redis": status.redis,
            "postgres": status.postgres,
            "pricing_lag": status.pricing_lag,
            "pricing_consumers": status.pricing_consumers,
            "in_flight": self.replies.in_flight,
        }
        if problem is not None:
            body["problem"] = problem
        return _json(200 if problem is None else 503, body)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        await self.backends.check()
        tasks = [
            asyncio.create_task(self.replies.run(), name="replies"),
            asyncio.create_task(self.replies.sweep(), name="reply-deadlines"),
            asyncio.create_task(self.backends.run(), name="backend-monitor"),
        ]
        log.info("gateway %s ready (replies on %s)", self.id, self.reply_stream)
        try:
            yield
        finally:
            await _stop(tasks)
            await self.backends.close()
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.reply_stream)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` until they have ended. One cancel is not always enough: redis-py (8.1) can swallow a
    cancellation that arrives as a reply completes, and its loop would then run on while shutdown waits."""
    while tasks:
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=0.1)
        tasks = list(pending)


def create_app(settings: Settings, redis: aioredis.Redis, database_url: str) -> web.Application:
    """The application; serve it with `ingest.edge` (`serve`, `edge_runner`), which the contract relies on."""
    metrics = GatewayMetrics(enabled=settings.metrics_enabled)
    gateway = Gateway(settings, redis, database_url, metrics)
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[GATEWAY] = gateway
    app.router.add_post("/api/bid/", gateway.post_bid, expect_handler=gateway.expect)
    app.router.add_post("/api/bid", gateway.post_bid, expect_handler=gateway.expect)
    app.router.add_get("/health", gateway.health)
    app.router.add_get("/ready", gateway.ready)
    # The contract (docs: schema/http_api.py), serialized once; and this gateway's Prometheus metrics.
    openapi_json = json.dumps(openapi_document()).encode()

    async def openapi(_request: web.Request) -> web.Response:
        return web.Response(body=openapi_json, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    app[GATEWAY_METRICS] = metrics
    app.router.add_get("/metrics", metrics.expose)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with gateway.running():
            yield

    app.cleanup_ctx.append(lifecycle)
    return app
