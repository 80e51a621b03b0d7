"""The Redis client factory and the packed path across a Redis restart: no dead pooled connection is handed out,
the first command after Redis is back succeeds, and only idempotent packed reads are retried."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError

from redis_streams.client import HEALTH_CHECK_INTERVAL_S, connect
from redis_streams.pipe import execute_packed, read_entries, xadd
from schema.settings import Settings
from tests.servers import RedisServer

POOLED = 12


async def fill_pool(client: aioredis.Redis) -> None:
    """Open POOLED connections at once (blocking reads), and leave them idle in the pool."""
    read = ("XREAD", "COUNT", 1, "BLOCK", 200, "STREAMS", "nothing", "0-0")
    await asyncio.gather(*(execute_packed(client, [read]) for _ in range(POOLED)))
    assert len(client.connection_pool._available_connections) == POOLED  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_the_first_commands_after_a_restart_succeed_on_every_pooled_connection(
    redis_server: RedisServer, how: str
) -> None:
    client = connect(redis_server.start(), Settings(), max_connections=64)
    try:
        await fill_pool(client)
        redis_server.stop() if how == "stop" else redis_server.kill()
        await asyncio.sleep(0.2)  # the outage: the client's event loop runs (and sees the sockets close)
        redis_server.start()  # same port, empty
        # Non-idempotent packed XADDs (never retried) and redis-py commands, on all the stale connections.
        results = await asyncio.gather(
            *(execute_packed(client, [xadd("s", {"n": str(n)})]) for n in range(POOLED)),
            *(client.ping() for _ in range(POOLED)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert await client.xlen("s") == POOLED  # each XADD applied once
    finally:
        await client.aclose()


async def test_factory_options() -> None:
    settings = Settings(redis_connect_timeout_s=1.5, redis_socket_timeout_s=4.0)
    client = connect("redis://127.0.0.1:1/0", settings, max_connections=7)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["socket_timeout"] == 4.0
    assert kwargs["socket_keepalive"] is True
    assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL_S
    assert kwargs["retry"].get_retries() == 1
    assert client.connection_pool.max_connections == 7
    assert not client.connection_pool.maint_notifications_enabled()  # type: ignore[attr-defined]
    no_retries = connect("redis://127.0.0.1:1/0", settings, retry_commands=False)
    assert no_retries.connection_pool.connection_kwargs["retry"].get_retries() == 0
    await client.aclose()
    await no_retries.aclose()


async def kill_blocked_reader(admin: aioredis.Redis) -> None:
    """Kill, server-side, the connection blocked in an XREAD (the connection dies mid-exchange)."""
    for _ in range(200):
        clients = [c for c in await admin.client_list() if c.get("cmd") == "xread"]
        if clients:
            await admin.client_kill_filter(_id=clients[0]["id"])
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("no blocked XREAD to kill")


async def test_an_idempotent_read_cut_off_mid_flight_is_retried_once(redis_server: RedisServer) -> None:
    url = redis_server.start()
    client, admin = connect(url, Settings()), connect(url, Settings())
    try:
        read = ("XREAD", "COUNT", 10, "BLOCK", 5000, "STREAMS", "replies", "0-0")
        pending = asyncio.ensure_future(execute_packed(client, [read], idempotent=True))
        await kill_blocked_reader(admin)
        await asyncio.sleep(0.1)
        assert not pending.done()  # retried: blocked again, on a fresh connection
        await admin.xadd("replies", {"a": "1"})
        (reply,) = await asyncio.wait_for(pending, timeout=10)
        assert [fields for _, fields in read_entries(reply)] == [{"a": "1"}]

        other = ("XREAD", "COUNT", 10, "BLOCK", 5000, "STREAMS", "other", "0-0")
        not_idempotent = asyncio.ensure_future(execute_packed(client, [other]))
        await kill_blocked_reader(admin)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(not_idempotent, timeout=10)
    finally:
        await client.aclose()
        await admin.aclose()


async def test_the_packed_path_returns_every_connection_to_the_pool_and_stays_within_its_size(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.start(), Settings(), max_connections=8)
    pool: object = client.connection_pool
    try:
        # More concurrent exchanges than connections: the extra ones wait or fail as the pool's own path does.
        results = await asyncio.gather(
            *(execute_packed(client, [("PING",)]) for _ in range(8)),
            *(execute_packed(client, [("XREAD", "COUNT", 1, "BLOCK", 50, "STREAMS", "none", "0-0")]) for _ in range(8)),
            return_exceptions=True,
        )
        assert all(r in (["PONG"], [None]) or isinstance(r, ConnectionError) for r in results), results
        for _ in range(50):  # reused one after the other: the same idle connection each time
            assert await execute_packed(client, [("PING",)]) == ["PONG"]
        assert not pool._in_use_connections  # type: ignore[attr-defined]
        assert len(pool._available_connections) <= 8  # type: ignore[attr-defined]
        # A pooled connection the server closed is replaced, not handed out: the next exchange succeeds.
        await client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
        await asyncio.sleep(0.1)
        assert await execute_packed(client, [("PING",)]) == ["PONG"]
    finally:
        await client.aclose()
