"""The gateway in process (aiohttp's test client, served through the edge) against a real Redis and PostgreSQL.

No pricing agent runs: the tests play it, reading `bids:requests` and writing the reply stream themselves, so
every answer path (200, 422 conflict, 422 rejected, 503, 504) is reached deterministically in milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import TestClient
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from bidengine.embedded import free_port
from ingest import app as gateway_app
from ingest.app import GATEWAY, Gateway, create_app, request_id_for
from ingest.body import BodyError, BodyIncomplete, BodyTimeout
from schema import keys
from schema.events import BidReply, BidRequested, encode_replies
from schema.settings import Settings
from tests.ingest.conftest import EdgeTestServer, served

BID = {"product_id": 4242, "current_cpc": 1.5, "target_roas": 150}


@dataclass
class InProcess:
    client: TestClient[web.Request, web.Application]
    gateway: Gateway
    redis: aioredis.Redis

    async def post(
        self, body: Any, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, CIMultiDict[str], Any]:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        response = await self.client.post(
            "/api/bid/", data=data, headers={"Content-Type": "application/json", **(headers or {})}, **kwargs
        )
        async with response:
            return response.status, CIMultiDict(response.headers), await response.json(content_type=None)

    async def next_request(self, after: str = "0-0") -> tuple[str, BidRequested, dict[str, str]]:
        """Play the pricing agent: the next entry on bids:requests (waiting for it)."""
        reply = await self.redis.xread({keys.BID_REQUESTS: after}, count=1, block=5000)
        assert reply, "nothing was published"
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        entry_id, fields = entries[0]
        return entry_id, BidRequested.from_fields(fields), fields

    async def answer(self, *replies: tuple[BidRequested, BidReply]) -> None:
        """One reply entry, as the agent writes per batch and gateway."""
        (reply_to,) = {event.reply_to for event, _ in replies}
        await self.redis.xadd(reply_to, encode_replies(reply for _, reply in replies))

    async def published(self) -> int:
        return int(await self.redis.xlen(keys.BID_REQUESTS))


Factory = Callable[..., Awaitable[InProcess]]


def samples(gateway: InProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample `name` of the gateway's registry (what /metrics shows), with its labels."""
    return [
        (sample.labels, sample.value)
        for family in gateway.gateway.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def sample(gateway: InProcess, name: str, **labels: str) -> float | None:
    return gateway.gateway.metrics.registry.get_sample_value(name, labels)


def unavailable(gateway: InProcess) -> dict[str, float]:
    """The 503s counted, by reason (those not zero)."""
    return {
        labels["reason"]: value for labels, value in samples(gateway, "bidengine_gateway_unavailable_total") if value
    }


@pytest.fixture
async def in_process(redis: aioredis.Redis, redis_url: str, database_url: str) -> AsyncIterator[Factory]:
    """Start in-process gateways with settings of the test's own; `redis_url`/`database_url` may be overridden."""
    started: list[tuple[TestClient[web.Request, web.Application], aioredis.Redis]] = []

    async def start(*, redis_at: str = redis_url, database_at: str = database_url, **overrides: Any) -> InProcess:
        # A pricing agent "alive" as the agents announce themselves (scored by Redis's clock): the gateway
        # refuses bids while none is. The tests answer in its place.
        seconds, micros = await redis.time()
        await redis.zadd(keys.consumers_key(keys.PRICING_GROUP), {"in-process-test": seconds * 1000 + micros // 1000})
        settings = Settings(redis_url=redis_at, database_url=database_at, **overrides)
        client_redis = aioredis.Redis.from_url(redis_at, decode_responses=True)
        app = create_app(settings, client_redis, database_at)
        client: TestClient[web.Request, web.Application] = TestClient(EdgeTestServer(app, settings))
        await client.start_server()
        started.append((client, client_redis))
        return InProcess(client, app[GATEWAY], redis)

    yield start
    for client, client_redis in started:
        await client.close()
        await client_redis.aclose()


# --- validation: nothing is published for a refused body --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"product_id": "abc", "current_cpc": -1, "target_roas": 0},
            ["Invalid product ID", "Invalid current CPC", "Invalid target ROAS"],
        ),
        (
            {"current_cpc": 1},
            [
                "Invalid product ID",
                "Invalid target ROAS",
                "Missing field: product_id",
                "Missing field: target_roas",
            ],
        ),
        ({"product_id": 0, "current_cpc": 1, "target_roas": 100}, ["Invalid product ID"]),
        (
            {"product_id": 1.5, "current_cpc": 1, "target_roas": 100},
            ["product_id must be a whole number from 1 to 9223372036854775807"],
        ),
        (
            {"product_id": 1, "current_cpc": 1e11, "target_roas": 100},
            ["current_cpc is too large to store (at most 9999999999.99)"],
        ),
        (b'{"product_id": 1', ["Malformed JSON body"]),
        (b"[1, 2]", ["Request body must be a JSON object"]),
        (b'{"product_id": NaN, "current_cpc": 1, "target_roas": 100}', ["Malformed JSON body"]),
    ],
    ids=[
        "legacy-three",
        "legacy-then-missing",
        "legacy-zero",
        "whole-number",
        "too-large",
        "malformed",
        "array",
        "nan",
    ],
)
async def test_invalid_bodies_are_400_with_the_legacy_messages_first(
    in_process: Factory, body: Any, errors: list[str]
) -> None:
    gateway = await in_process()
    status, headers, answer = await gateway.post(body)
    assert (status, answer) == (400, {"errors": errors})
    assert "Retry-After" not in headers
    assert await gateway.published() == 0


async def test_refusals_from_headers(in_process: Factory) -> None:
    gateway = await in_process()
    status, _, answer = await gateway.post(BID, {"Content-Type": "text/plain"})
    assert (status, answer) == (415, {"errors": ["Content-Type must be application/json"]})
    status, headers, answer = await gateway.post(BID, {"Content-Encoding": "br"})
    assert status == 415
    assert headers["Accept-Encoding"] == "gzip, deflate"
    status, _, answer = await gateway.post(b" " * (16 * 1024 + 1))
    assert (status, answer) == (413, {"errors": ["Request body is larger than 16384 bytes"]})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found while reading
        for _ in range(20):
            yield b" " * 1024

    status, _, answer = await gateway.post(chunks())
    assert (status, answer) == (413, {"errors": ["Request body is larger than 16384 bytes"]})
    status, _, answer = await gateway.post(BID, {"Idempotency-Key": "x" * 256})
    assert (status, answer) == (400, {"errors": ["Idempotency-Key must be 1 to 255 printable ASCII characters"]})
    assert await gateway.published() == 0


# --- publishing and reply routing --------------------------------------------------------------------------


async def test_a_bid_is_published_with_its_fields_and_answered_from_its_reply(in_process: Factory) -> None:
    gateway = await in_process()
    posted = asyncio.ensure_future(gateway.post(BID, {"Idempotency-Key": "order-77-1"}))
    _, event, fields = await gateway.next_request()
    assert fields == {
        "request_id": request_id_for("order-77-1"),
        "reply_to": gateway.gateway.reply_stream,
        "reply_id": event.reply_id,
        "product_id": "4242",
        "current_cpc": "1.5",
        "target_roas": "150.0",
    }
    await gateway.answer((event, BidReply(event.reply_id, bid_id=7, adjusted_cpc="2.25")))
    status, headers, answer = await posted
    assert (status, answer) == (200, {"adjusted_cpc": 2.25, "bid_id": 7})
    assert headers["X-Request-Id"] == request_id_for("order-77-1")


async def test_a_gzip_body_is_published_decoded(in_process: Factory) -> None:
    gateway = await in_process()
    posted = asyncio.ensure_future(gateway.post(gzip.compress(json.dumps(BID).encode()), {"Content-Encoding": "gzip"}))
    _, event, _ = await gateway.next_request()
    assert (event.product_id, event.current_cpc, event.target_roas) == (4242, 1.5, 150.0)
    await gateway.answer((event, BidReply(event.reply_id, bid_id=8, adjusted_cpc="2.25")))
    assert (await posted)[0] == 200


@pytest.mark.parametrize(
    ("reply", "status", "answer"),
    [
        (
            BidReply("", error=BidReply.IDEMPOTENCY_CONFLICT),
            422,
            {"errors": ["Idempotency-Key was already used for a different bid"]},
        ),
        (BidReply("", error=BidReply.REJECTED), 422, {"errors": ["The bid could not be stored"]}),
    ],
    ids=["conflict", "rejected"],
)
async def test_error_replies_are_422(in_process: Factory, reply: BidReply, status: int, answer: dict[str, Any]) -> None:
    gateway = await in_process()
    posted = asyncio.ensure_future(gateway.post(BID, {"Idempotency-Key": "k-1"}))
    _, event, _ = await gateway.next_request()
    await gateway.answer((event, BidReply(event.reply_id, error=reply.error)))
    got_status, headers, got = await posted
    assert got_status == status
    assert got["errors"] == answer["errors"]
    assert headers["X-Request-Id"] == request_id_for("k-1")


async def test_replies_of_one_entry_reach_their_own_requests(in_process: Factory) -> None:
    """Five requests in flight, answered by one reply entry in another order: each gets its own bid."""
    gateway = await in_process()
    posted = [asyncio.ensure_future(gateway.post({**BID, "product_id": 100 + i})) for i in range(5)]
    events, after = [], "0-0"
    for _ in posted:
        after, event, _ = await gateway.next_request(after)
        events.append(event)
    replies = [(event, BidReply(event.reply_id, bid_id=event.product_id * 10, adjusted_cpc="2.25")) for event in events]
    await gateway.answer(*reversed(replies))
    answers = await asyncio.gather(*posted)
    assert [answer["bid_id"] for _, _, answer in answers] == [1000, 1010, 1020, 1030, 1040]


# --- 503 and 504 -------------------------------------------------------------------------------------------


async def test_redis_unreachable_is_a_503(in_process: Factory) -> None:
    gateway = await in_process(redis_at=f"redis://127.0.0.1:{free_port()}/0", retry_after_s=3)
    status, headers, answer = await gateway.post(BID)
    assert (status, answer) == (503, {"errors": ["Service unavailable: Redis is unreachable"]})
    assert headers["Retry-After"] == "3"
    status, _, _ = await gateway.post({"product_id": 1})
    assert status == 400  # validation first: a bad bid is a 400 whatever the backends
    assert unavailable(gateway) == {"redis": 1}


async def test_postgres_unreachable_is_a_503(in_process: Factory) -> None:
    gateway = await in_process(database_at=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    status, _, answer = await gateway.post(BID)
    assert (status, answer) == (503, {"errors": ["Service unavailable: PostgreSQL is unreachable"]})
    assert await gateway.published() == 0
    assert unavailable(gateway) == {"postgres": 1}


async def test_too_many_bids_in_flight_is_a_503(in_process: Factory) -> None:
    gateway = await in_process(max_in_flight=1)
    first = asyncio.ensure_future(gateway.post(BID))
    _, event, _ = await gateway.next_request()
    assert gateway.gateway.replies.in_flight == 1
    status, _, answer = await gateway.post(BID)
    assert (status, answer) == (503, {"errors": ["Service unavailable: 1 bids in flight in this gateway"]})
    assert await gateway.published() == 1
    await gateway.answer((event, BidReply(event.reply_id, bid_id=1, adjusted_cpc="2.25")))
    assert (await first)[0] == 200
    assert unavailable(gateway) == {"in_flight": 1}
    assert sample(gateway, "bidengine_gateway_reply_wait_seconds_count") == 1


async def test_pricing_agents_too_far_behind_is_a_503(in_process: Factory, redis: aioredis.Redis) -> None:
    await redis.xgroup_create(keys.BID_REQUESTS, keys.PRICING_GROUP, id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(keys.BID_REQUESTS, {"dummy": "1"})
    # Delivered, never acknowledged: pending on every Redis version (6.2 reports no `lag`).
    await redis.xreadgroup(keys.PRICING_GROUP, "stuck", {keys.BID_REQUESTS: ">"}, count=3)
    gateway = await in_process(max_pricing_lag=2)
    for _ in range(100):  # a loaded machine may make one check's 1 s connect deadline
        status = await gateway.gateway.backends.check()
        if status.redis and status.postgres:
            break
    status, _, answer = await gateway.post(BID)
    assert (status, answer) == (503, {"errors": ["Service unavailable: the pricing agents are 3 bids behind"]})
    assert await gateway.published() == 3
    assert unavailable(gateway) == {"pricing_lag": 1}


async def test_no_reply_in_time_is_a_504_with_the_request_id(
    in_process: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await in_process(reply_timeout_s=0.2)
    with caplog.at_level(logging.INFO, logger="ingest.app"):
        status, headers, answer = await gateway.post(BID, {"Idempotency-Key": "slow-1"})
    assert status == 504
    assert answer == {
        "errors": ["The bid was accepted but not confirmed in time; retry with the same Idempotency-Key"],
        "request_id": request_id_for("slow-1"),
    }
    assert headers["X-Request-Id"] == request_id_for("slow-1")
    assert gateway.gateway.replies.in_flight == 0
    assert await gateway.published() == 1
    assert sample(gateway, "bidengine_gateway_reply_timeouts_total") == 1
    assert sample(gateway, "bidengine_gateway_reply_wait_seconds_count") == 1
    assert sample(gateway, "bidengine_gateway_reply_wait_seconds_sum") == pytest.approx(0.2)
    (line,) = [r for r in caplog.records if "not confirmed" in r.getMessage()]
    assert line.__dict__["request_id"] == request_id_for("slow-1")  # one grep on the id finds it


async def test_publish_failure_is_a_503(in_process: Factory, redis: aioredis.Redis) -> None:
    """Redis refuses the XADD (here: the key holds another type): 503, not a 500."""
    await redis.set(keys.BID_REQUESTS, "not a stream")
    gateway = await in_process()
    status, _, answer = await gateway.post(BID)
    assert (status, answer) == (503, {"errors": ["Service unavailable: Redis is unreachable"]})
    assert unavailable(gateway) == {"publish_failed": 1}


async def test_metrics_disabled_records_nothing_per_request(in_process: Factory) -> None:
    """METRICS_ENABLED=false: the hot path records nothing; /metrics still answers."""
    gateway = await in_process(max_in_flight=0, metrics_enabled=False)
    assert (await gateway.post(BID))[0] == 503
    assert (await gateway.post({"product_id": 1}))[0] == 400
    assert unavailable(gateway) == {}
    assert sample(gateway, "bidengine_http_requests_total", route="/api/bid/", method="POST", status="400") is None
    response = await gateway.client.get("/metrics")
    assert response.status == 200
    assert "process_cpu_seconds_total" in await response.text()


async def test_requests_are_counted_by_route_template_method_and_status(in_process: Factory) -> None:
    gateway = await in_process(max_in_flight=0)
    for body in (BID, {"product_id": 1}, {"product_id": 1}):
        await gateway.post(BID if body is BID else body)
    await gateway.client.get("/nope/123")
    await gateway.client.delete("/api/bid/")
    await gateway.client.request("BREW", "/api/bid/")  # refused by aiohttp's parser: no route, no method
    await gateway.client.get("/health")
    counted = {
        (labels["route"], labels["method"], labels["status"]): value
        for labels, value in samples(gateway, "bidengine_http_requests_total")
    }
    assert counted == {
        ("/api/bid/", "POST", "503"): 1,
        ("/api/bid/", "POST", "400"): 2,
        ("other", "GET", "404"): 1,  # the path is never a label
        ("other", "DELETE", "405"): 1,
        ("other", "other", "400"): 1,  # nor a method HTTP does not define
        ("/health", "GET", "200"): 1,
    }
    assert sample(gateway, "bidengine_http_request_duration_seconds_count", route="/api/bid/") == 3


# --- JSON errors from aiohttp's plumbing, and the catch-all ------------------------------------------------


async def test_routing_errors_are_json(in_process: Factory) -> None:
    gateway = await in_process()
    response = await gateway.client.get("/nope")
    assert (response.status, await response.json()) == (404, {"errors": ["Not found: GET /nope"]})
    response = await gateway.client.get("/api/bid/")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await response.json() == {"errors": ["Method GET is not allowed on /api/bid/ (allowed: POST)"]}
    response = await gateway.client.post("/api/bid/", data=b"{}", headers={"Expect": "teapot"})
    assert (response.status, await response.json()) == (
        417,
        {"errors": ["Expect: 'teapot' is not supported (only 100-continue is)"]},
    )


async def test_expect_100_continue(in_process: Factory) -> None:
    gateway = await in_process(reply_timeout_s=0.2)
    status, _, _ = await gateway.post(BID, expect100=True)
    assert status == 504  # accepted and published (no agent here)
    status, _, answer = await gateway.post(BID, {"Content-Type": "text/plain"}, expect100=True)
    assert (status, answer) == (415, {"errors": ["Content-Type must be application/json"]})


async def test_an_unexpected_error_is_logged_and_a_json_500(
    in_process: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_body: bytes) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway_app, "parse_bid", broken)
    gateway = await in_process()
    with caplog.at_level(logging.ERROR, logger="ingest.edge"):
        status, headers, answer = await gateway.post(BID)
    assert (status, answer) == (500, {"errors": ["Internal server error"]})
    assert headers["Content-Type"].startswith("application/json")
    (record,) = [r for r in caplog.records if r.name == "ingest.edge"]
    assert record.getMessage() == "unexpected error answering POST /api/bid/"
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert await gateway.published() == 0


# --- memory: a refused request leaves nothing for the garbage collector ------------------------------------

GZIPPED = gzip.compress(json.dumps(BID).encode())
POST = b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
REFUSED = {
    "gzip-corrupt": POST + b"Content-Encoding: gzip\r\nContent-Length: 12\r\n\r\n\x1f\x8b\x08\x00garbage!",
    "gzip-crc": POST
    + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(GZIPPED)
    + GZIPPED[:-8]
    + bytes(4)
    + GZIPPED[-4:],
    "body-timeout": POST + b"Content-Length: 100\r\n\r\n{",
    "body-cut-by-eof": POST + b"Content-Length: 100\r\n\r\n{",
    "chunk-malformed": POST + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nzz\r\n',
    "too-large": POST + b"Content-Length: 20000\r\n\r\n",
    "invalid": POST + b'Content-Length: 16\r\n\r\n{"product_id": 0',
    "parser-error": b"GARBAGE\r\n\r\n",
    "headers-timeout": b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\n",
    "not-found": b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "method-not-allowed": b"GET /api/bid/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


def holds_a_request(thing: object) -> bool:
    """Garbage that pins a request, its body or its connection (what a flood of refused requests would pile up).

    Other cyclic garbage exists and is harmless: asyncio's selector transports (two per test connection),
    the backend monitor's per-second Redis errors, and aiohttp's router, which makes a route and an exception
    per unknown path or method that refer to each other (no request, no body).
    """
    if isinstance(thing, StreamReader | web.BaseRequest | RequestHandler | BodyError | BodyTimeout | BodyIncomplete):
        return True
    if isinstance(thing, bytes | bytearray):
        return len(thing) > 1024
    if isinstance(thing, FrameType):
        return any(part in thing.f_code.co_filename for part in ("/ingest/", "aiohttp/web_", "aiohttp/streams"))
    return False


async def test_refused_requests_leave_no_reference_cycles(in_process: Factory) -> None:
    """An exception kept by a payload or the router makes a cycle through the frames that hold the request and
    its body: freed only by a full collection, which the gateway runs rarely (gc thresholds in
    ingest/server.py), so a flood of such requests made memory grow. No refused request may leave one."""
    gateway = await in_process(body_timeout_s=0.1, header_timeout_s=0.1)
    address = served(gateway.client.server)

    async def send(request: bytes, half_close: bool) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(request)
        if half_close:
            writer.write_eof()
        try:
            answer = await asyncio.wait_for(reader.read(), timeout=10)
        except TimeoutError:
            raise AssertionError(f"no answer and no close: {request[:80]!r}") from None
        writer.close()
        await writer.wait_closed()
        return answer

    for kind, request in REFUSED.items():
        half_close = kind == "body-cut-by-eof"
        await send(request, half_close)  # warm-up: what is created once is not garbage
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            answers = [await send(request, half_close) for _ in range(5)]
            await asyncio.sleep(0.05)
            gc.collect()
            garbage = collections.Counter(type(o).__name__ for o in gc.garbage)
            pinned = [repr(thing)[:120] for thing in gc.garbage if holds_a_request(thing)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert all(answer.startswith(b"HTTP/1.") for answer in answers), (kind, answers)
        assert pinned == [], (kind, garbage.most_common(8))
