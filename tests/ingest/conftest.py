"""Gateways for the edge tests: real `bidengine gateway` processes (and a pricing agent) with deadlines short
enough for tests, and in-process gateways served by the same edge through aiohttp's test client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis as sync_redis
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from ingest.edge import edge_runner
from schema import keys
from schema.database import BIDS_TABLE
from schema.settings import Settings
from tests.pipeline.conftest import Pipeline
from tests.servers import RedisServer

# Deadlines of the gateway under test (seconds): short, so that a deadline test takes about a second.
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 3.0
LINGERING_CLOSE_S = 2.0
MAX_HEADER_BYTES = 16 * 1024
EDGE_ENV = {
    "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
    "LINGERING_CLOSE_S": str(LINGERING_CLOSE_S),
    "MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
}


@dataclass(frozen=True)
class Snapshot:
    last_entry: str  # the last id generated on bids:requests
    last_bid: int  # the highest id in bidding_productbid


class Edge:
    """A running gateway seen from outside: its address, process, stream and table."""

    def __init__(self, pipeline: Pipeline, redis: sync_redis.Redis, db: psycopg.Connection[Any]) -> None:
        self.pipeline = pipeline
        self.redis = redis
        self.db = db
        host, port = pipeline.gateway_url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def __repr__(self) -> str:
        return f"Edge({self.pipeline.gateway_url})"

    @property
    def pid(self) -> int:
        return self.pipeline.processes["gateway"].pid

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def snapshot(self) -> Snapshot:
        info = self.redis.xinfo_stream(keys.BID_REQUESTS)
        (last_bid,) = self.db.execute(f"SELECT coalesce(max(id), 0) FROM {BIDS_TABLE}").fetchone() or (0,)
        return Snapshot(str(info["last-generated-id"]), int(last_bid))

    def published_since(self, snapshot: Snapshot) -> list[dict[str, str]]:
        entries = self.redis.xrange(keys.BID_REQUESTS, min=f"({snapshot.last_entry}", max="+")
        return [fields for _, fields in entries]

    def rows_since(self, snapshot: Snapshot) -> list[tuple[int, int, str]]:
        """(id, product_id, request_id) of the rows stored since the snapshot."""
        query = f"SELECT id, product_id, request_id::text FROM {BIDS_TABLE} WHERE id > %s ORDER BY id"
        return [tuple(row) for row in self.db.execute(query, (snapshot.last_bid,)).fetchall()]  # type: ignore[misc]

    def assert_nothing_stored(self, snapshot: Snapshot) -> None:
        """No entry on bids:requests and no row since the snapshot: nothing can be stored later either."""
        assert self.published_since(snapshot) == [], "a refused request was published"
        assert self.rows_since(snapshot) == [], "a refused request was stored"


def start_edge(redis_url: str, database_url: str) -> tuple[Pipeline, Edge]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        **EDGE_ENV,
    }
    pipeline = Pipeline(env["REDIS_URL"], database_url, env)
    redis = sync_redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    redis.flushdb()
    pipeline.start("pricing-agent")
    pipeline.start_gateway()
    db: psycopg.Connection[Any] = psycopg.connect(database_url, autocommit=True)
    return pipeline, Edge(pipeline, redis, db)


@pytest.fixture(scope="module")
def edge(private_redis_server: RedisServer, database_url: str) -> Iterator[Edge]:
    """The real gateway and a pricing agent (shared by a module's tests), on database 2 of the session's private
    Redis (the `pipeline` fixture uses database 1)."""
    pipeline, gateway = start_edge(private_redis_server.url(2), database_url)
    try:
        yield gateway
    finally:
        pipeline.stop_all()
        gateway.db.close()
        gateway.redis.close()


@pytest.fixture(scope="module")
def another_gateway(edge: Edge) -> Iterator[Callable[..., Edge]]:
    """Start more gateways with their own settings, next to `edge` (same Redis database and pricing agent)."""
    started: list[Pipeline] = []

    def start(**env: str) -> Edge:
        pipeline = Pipeline(edge.pipeline.redis_url, edge.pipeline.database_url, {**edge.pipeline.env, **env})
        started.append(pipeline)
        pipeline.start_gateway()
        return Edge(pipeline, edge.redis, edge.db)

    yield start
    for pipeline in started:
        pipeline.stop_all()


class EdgeTestServer(TestServer):
    """aiohttp's in-process test server, serving the application through the gateway's edge."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self.settings = settings

    async def _make_runner(self, **_kwargs: Any) -> web.BaseRunner:
        return edge_runner(self.app, self.settings)


def served(server: BaseTestServer) -> tuple[str, int]:
    assert server.host is not None
    assert server.port is not None
    return server.host, server.port
