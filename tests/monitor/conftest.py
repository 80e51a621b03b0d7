"""Fixtures for the monitor tests: the fake products API, settings pointing at it, a monitor to drive."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitor.fake_api import RunningFakeApi, running_fake_api
from monitor.http import build_app
from monitor.service import Monitor, connect_redis
from schema.settings import RedisSettings
from tests.servers import RedisServer


@pytest.fixture
async def fake_api() -> AsyncIterator[RunningFakeApi]:
    async with running_fake_api() as api:
        yield api


@pytest.fixture
def settings(redis_url: str, fake_api: RunningFakeApi) -> RedisSettings:
    """Short timeouts and few retries, so failure paths take milliseconds; the interval never elapses."""
    return RedisSettings(
        redis_url=redis_url,
        monitor_source_url=fake_api.products_url,
        monitor_page_size=30,
        monitor_timeout_s=0.5,
        monitor_max_retries=2,
        monitor_interval_s=3600.0,
    )


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _no_sleep(_seconds: float) -> None:
    """Backoff delays are asserted on the client; here they would only slow the tests down."""


MonitorFactory = Callable[..., Monitor]


@pytest.fixture
async def make_monitor(
    settings: RedisSettings, http_session: aiohttp.ClientSession, clock: Clock
) -> AsyncIterator[MonitorFactory]:
    """Build a monitor (its own Redis client, like the service) from `settings` with overrides."""
    clients: list[aioredis.Redis] = []

    def make(**overrides: Any) -> Monitor:
        chosen = dataclasses.replace(settings, **overrides)
        assert chosen.redis_url
        client = connect_redis(chosen.redis_url)
        clients.append(client)
        return Monitor(chosen, client, http_session, clock=clock, sleep=_no_sleep)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def own_redis(redis_server: RedisServer) -> RedisServer:
    redis_server.start()
    return redis_server


HttpClientFactory = Callable[[Monitor], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def http_client(clock: Clock) -> AsyncIterator[HttpClientFactory]:
    """The monitor's HTTP app, served on 127.0.0.1, sharing the monitor's Redis client and clock."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(monitor: Monitor) -> TestClient[web.Request, web.Application]:
        app = build_app(monitor.redis, monitor.history, stale_after_s=monitor.stale_after_s, clock=clock)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
