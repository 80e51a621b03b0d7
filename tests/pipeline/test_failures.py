"""The honest failure answers: 504 when no reply comes in time, 503 when a backend is down or too much is in flight.

Each test runs its own gateway (a `Pipeline` with its own environment and Redis database) as a subprocess, and
stops it at the end. The gateway refreshes its view of the backends every second: tests poll, never sleep.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis as sync_redis

from bidengine.embedded import free_port
from schema import keys
from schema.database import BIDS_TABLE
from tests.pipeline.conftest import Pipeline, SilentConsumer
from tests.servers import RedisServer

VALID_BID = {"product_id": 4242, "current_cpc": 1.5, "target_roas": 150}
POLL_TIMEOUT_S = 30.0

Response = tuple[int, dict[str, str], Any]


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - a local http:// URL of our own gateway
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def post_bid(gateway: Pipeline, body: Any, headers: dict[str, str] | None = None) -> Response:
    return request("POST", f"{gateway.gateway_url}/api/bid/", body, headers)


def poll(what: str, condition: Callable[[], Any], timeout_s: float = POLL_TIMEOUT_S) -> Any:
    """The first truthy value of condition(), or a TimeoutError naming what never happened."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, ValueError) as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise TimeoutError(f"{what}: last {last!r}")


def ready(gateway: Pipeline) -> Response:
    return request("GET", f"{gateway.gateway_url}/ready")


def assert_unavailable(response: Response, reason: str) -> None:
    status, headers, body = response
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1, headers
    assert isinstance(body["errors"], list), body
    assert body["errors"], body
    assert any(reason in error for error in body["errors"]), body


GatewayFactory = Callable[..., Pipeline]


@pytest.fixture(scope="module")
def gateways(database_url: str) -> Iterator[GatewayFactory]:
    """Start gateways (and agents) with their own environment; every one is stopped when the module ends."""
    started: list[Pipeline] = []

    def start(*, redis: str, database: str = database_url, wait: bool = False, **env: str) -> Pipeline:
        base = {"REDIS_URL": redis, "DATABASE_URL": database, "LOG_LEVEL": "WARNING", "CLAIM_IDLE_MS": "1000"}
        gateway = Pipeline(redis, database, {**os.environ, **base, **env})
        started.append(gateway)
        if wait:
            gateway.start_gateway()
            return gateway
        port = free_port()
        gateway.gateway_url = f"http://127.0.0.1:{port}"
        process = gateway.start("gateway", GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))

        def listening() -> bool:
            assert process.poll() is None, f"the gateway exited with {process.returncode} instead of serving"
            return request("GET", f"{gateway.gateway_url}/health")[0] == 200

        poll("gateway /health", listening)
        return gateway

    yield start
    for gateway in started:
        gateway.stop_all()


def fresh_redis_db(server: RedisServer, db: int) -> tuple[str, sync_redis.Redis]:
    """A flushed database of the session's private Redis (database 1 is the `pipeline` fixture's), with the
    pricing group on bids:requests, as an agent would have left it."""
    url = server.url(db)
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    client.xgroup_create(keys.BID_REQUESTS, keys.PRICING_GROUP, id="0", mkstream=True)
    return url, client


def test_no_reply_in_time_is_a_504_and_the_retry_stores_the_bid_once(
    gateways: GatewayFactory, private_redis_server: RedisServer, database_url: str
) -> None:
    url, client = fresh_redis_db(private_redis_server, 2)
    key = {"Idempotency-Key": f"timeout-{uuid.uuid4()}"}
    bid = {**VALID_BID, "product_id": 5040}
    with SilentConsumer(url) as slow_agent:  # reads the bid, never answers
        gateway = gateways(redis=url, wait=True, REPLY_TIMEOUT_S="0.5")
        status, headers, body = post_bid(gateway, bid, key)
    assert slow_agent.read  # it took the bid: pending, for the real agent to reclaim
    assert status == 504, body
    request_id = body["request_id"]
    assert str(uuid.UUID(request_id)) == request_id
    assert headers["X-Request-Id"] == request_id
    assert isinstance(body["errors"], list), body
    assert body["errors"], body
    assert client.xlen(keys.BID_REQUESTS) == 1  # accepted: on the stream, waiting for an agent

    gateway.start("pricing-agent")  # takes the silent consumer's entry over after CLAIM_IDLE_MS
    with psycopg.connect(database_url, autocommit=True) as db:

        def stored() -> list[tuple[Any, ...]]:
            query = f"SELECT id, product_id FROM {BIDS_TABLE} WHERE request_id = %s"
            return db.execute(query, (request_id,)).fetchall()

        # The timed-out request itself is priced and stored once the agent is up.
        [(bid_id, product_id)] = poll("the timed-out bid stored", stored, timeout_s=60)
        assert product_id == 5040

        def retried() -> Response | None:
            response = post_bid(gateway, bid, key)
            # A slow first reply may time out again (504), and the gateway may not have seen the new agent's
            # presence yet (503, Retry-After): a bidder retries both with its key, and so does this test.
            return None if response[0] in (503, 504) else response

        status, headers, body = poll("a 200 for the retry", retried)
        assert status == 200, body
        assert body == {"adjusted_cpc": 2.25, "bid_id": bid_id}
        assert headers["X-Request-Id"] == request_id
        assert stored() == [(bid_id, 5040)]
        assert db.execute(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = 5040").fetchone() == (1,)
    client.close()


@pytest.fixture(scope="module")
def postgres_down(gateways: GatewayFactory, private_redis_server: RedisServer) -> tuple[Pipeline, sync_redis.Redis]:
    url, client = fresh_redis_db(private_redis_server, 3)
    gateway = gateways(redis=url, database=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    return gateway, client


@pytest.fixture(scope="module")
def redis_down(gateways: GatewayFactory) -> Pipeline:
    return gateways(redis=f"redis://127.0.0.1:{free_port()}/0")


def test_postgres_unreachable_is_a_503_and_nothing_is_published(
    postgres_down: tuple[Pipeline, sync_redis.Redis],
) -> None:
    gateway, client = postgres_down
    status, _, body = poll("/ready seeing Redis up", lambda: (answer := ready(gateway))[2]["redis"] and answer)
    assert status == 503, body
    assert body["postgres"] is False
    assert body["redis"] is True
    before = client.xinfo_stream(keys.BID_REQUESTS)["last-generated-id"]

    assert_unavailable(post_bid(gateway, VALID_BID), "PostgreSQL")

    assert client.xinfo_stream(keys.BID_REQUESTS)["last-generated-id"] == before
    assert client.xlen(keys.BID_REQUESTS) == 0
    assert request("GET", f"{gateway.gateway_url}/health")[0] == 200


def test_redis_unreachable_is_a_503(redis_down: Pipeline) -> None:
    gateway = redis_down
    status, _, body = poll("/ready seeing PostgreSQL up", lambda: (answer := ready(gateway))[2]["postgres"] and answer)
    assert status == 503, body
    assert body["redis"] is False
    assert body["postgres"] is True
    assert body["pricing_lag"] is None

    assert_unavailable(post_bid(gateway, VALID_BID), "Redis")
    assert request("GET", f"{gateway.gateway_url}/health")[0] == 200


@pytest.mark.parametrize("down", ["postgres_down", "redis_down"])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"product_id": 1, "current_cpc": 1.5}, "Missing field: target_roas"),
        ({"product_id": "abc", "current_cpc": -1, "target_roas": 0}, "Invalid product ID"),
        (b'{"product_id": 1', "Malformed JSON body"),
    ],
)
def test_invalid_bid_is_a_400_even_when_a_backend_is_down(
    request: pytest.FixtureRequest, down: str, body: Any, error: str
) -> None:
    fixture = request.getfixturevalue(down)
    gateway: Pipeline = fixture[0] if isinstance(fixture, tuple) else fixture
    poll("/ready answering 503", lambda: ready(gateway)[0] == 503)
    status, headers, answer = post_bid(gateway, body)
    assert status == 400, answer
    assert error in answer["errors"], answer
    assert "Retry-After" not in headers


def test_too_many_bids_in_flight_is_a_503(gateways: GatewayFactory, private_redis_server: RedisServer) -> None:
    url, client = fresh_redis_db(private_redis_server, 4)
    first: list[Response] = []
    with SilentConsumer(url):
        gateway = gateways(redis=url, wait=True, MAX_IN_FLIGHT="1", REPLY_TIMEOUT_S="3")
        pending = threading.Thread(target=lambda: first.append(post_bid(gateway, VALID_BID)))
        pending.start()
        try:
            poll("the first bid in flight", lambda: ready(gateway)[2]["in_flight"] == 1)
            assert_unavailable(post_bid(gateway, {**VALID_BID, "product_id": 2}), "in flight")
            assert client.xlen(keys.BID_REQUESTS) == 1  # only the first one was published
        finally:
            pending.join(timeout=30)
    assert [status for status, _, _ in first] == [504]  # a live but silent agent: it times out, it is not refused
    poll("nothing in flight any more", lambda: ready(gateway)[2]["in_flight"] == 0)
    client.close()


def test_pipeline_answers_503_while_redis_is_away_and_recovers_when_it_returns(
    gateways: GatewayFactory, redis_server: RedisServer
) -> None:
    """Redis restarts empty (no persistence): the gateway refuses honestly, then the agent recreates its group."""
    url = redis_server.start()
    gateway = gateways(redis=url)
    gateway.start("pricing-agent")
    poll("a pricing agent consuming", lambda: ready(gateway)[0] == 200)
    status, _, body = post_bid(gateway, VALID_BID)
    assert status == 200, body

    redis_server.stop()
    poll("gateway sees Redis gone", lambda: ready(gateway)[2].get("redis") is False)
    assert_unavailable(post_bid(gateway, VALID_BID), "Redis")

    redis_server.start()  # same port, empty
    poll("agent recreated its group and reads it", lambda: ready(gateway)[0] == 200)
    status, _, body = post_bid(gateway, {**VALID_BID, "product_id": 4343})
    assert status == 200, body
    with psycopg.connect(gateway.database_url) as conn:
        row = conn.execute(f"SELECT product_id FROM {BIDS_TABLE} WHERE id = %s", (body["bid_id"],)).fetchone()
    assert row == (4343,)
