"""Session fixtures: a real Redis and a real PostgreSQL for every test.

REDIS_URL / DATABASE_URL point at existing servers (the database named there is only used to create a
fresh, uniquely named test database, dropped at the end; the Redis database is flushed between tests).
Unset, embedded servers are started for the session and stopped after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
import redis.asyncio as aioredis

from bidengine.embedded import servers
from schema.database import BIDS_TABLE, REQUEST_LEDGER, apply_migrations
from tests.servers import RedisServer


def database_named(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def _servers() -> Iterator[tuple[str, str]]:
    with servers(os.environ.get("REDIS_URL") or None, os.environ.get("DATABASE_URL") or None) as urls:
        yield urls


@pytest.fixture(scope="session")
def redis_url(_servers: tuple[str, str]) -> str:
    return _servers[0]


@pytest.fixture(scope="session")
def private_redis_server() -> Iterator[RedisServer]:
    """A Redis server of the session's own, for tests that need several databases of one server (processes of
    the end-to-end tests): they never touch databases of REDIS_URL's server other than the one given."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of the test's own, which it may stop, kill and start again (empty) on the same port."""
    server = RedisServer()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def database_url(_servers: tuple[str, str]) -> Iterator[str]:
    """A fresh database with every migration applied, dropped when the session ends."""
    server_url = _servers[1]
    name = f"bidengine_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_named(server_url, name)
    apply_migrations(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, with the bids table emptied before the test."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    await pool.execute(f"TRUNCATE {BIDS_TABLE}, {REQUEST_LEDGER} RESTART IDENTITY")
    yield pool
    await pool.close()
