"""Each bid counted and flagged exactly once: under redelivery, two agents at once, and a crash before the
acknowledgement, with every interleaving made deterministic (gates on the connections, a stopped Redis, a
consumer group fed directly, a process frozen with SIGSTOP before it is killed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from processors import audit_store
from processors.bridge import handle_until_done
from redis_streams.groups import Batch, GroupReader
from schema.events import PricedBid
from schema.keys import AUDIT_GROUP, BIDS_PRICED
from tests.servers import RedisServer

from .audit_helpers import (
    NOW,
    audit_group,
    entries,
    flagged_ids,
    priced,
    publish,
    review,
    reviewed_and_flagged,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIDS = [priced(i, "10.00", "13.00" if i % 2 else "10.50", product_id=i % 5) for i in range(1, 201)]
FIRST, SECOND = entries(BIDS[:150]), entries(BIDS[50:])  # 100 bids in both
ODD = list(range(1, 201, 2))  # the flagged ones


def gated_client(url: str, gate: asyncio.Event, sent: asyncio.Event) -> aioredis.Redis:
    """A client whose script calls wait for `gate` before they are written, and set `sent` once written."""

    class GatedConnection(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, bytes) else b"".join(command)
            scripted = b"EVALSHA" in packed or b"\r\nEVAL\r\n" in packed
            if scripted:
                await gate.wait()
            await super().send_packed_command(command, check_health)
            if scripted:
                sent.set()

    pool = ConnectionPool.from_url(url, connection_class=GatedConnection, decode_responses=True)
    return aioredis.Redis(connection_pool=pool)


@pytest.fixture
async def two_agents(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[list[tuple[aioredis.Redis, ...]]]:
    """Two clients, as two agent processes have, each gated; the script is loaded and both are connected."""
    await review(redis, entries([priced(10**6, "1.00", "1.00")]), now=NOW)  # loads the script
    await redis.flushdb()
    agents = []
    for _ in range(2):
        gate, sent = asyncio.Event(), asyncio.Event()
        agents.append((gated_client(redis_url, gate, sent), gate, sent))
    for client, _, _ in agents:
        await client.ping()
    yield agents  # type: ignore[misc]
    for client, _, _ in agents:
        await client.aclose()


@pytest.mark.parametrize("first_to_run", [0, 1])
async def test_two_agents_over_overlapping_batches_in_either_order(
    redis: aioredis.Redis, two_agents: list[tuple[Any, ...]], first_to_run: int
) -> None:
    # Both agents have decoded their batch and are about to write it; Redis then runs one script, then the other.
    (a, gate_a, _), (b, gate_b, _) = two_agents
    tasks = [asyncio.create_task(review(a, FIRST)), asyncio.create_task(review(b, SECOND))]
    gates = [gate_a, gate_b]
    gates[first_to_run].set()
    first = await tasks[first_to_run]
    assert not tasks[1 - first_to_run].done()  # held at its gate until now
    gates[1 - first_to_run].set()
    second = await tasks[1 - first_to_run]

    assert (first.counted, first.duplicates) == (150, 0)
    assert (second.counted, second.duplicates) == (50, 100)  # the overlap was counted by the first only
    assert first.flagged + second.flagged == 100
    assert await flagged_ids(redis) == ODD
    assert await reviewed_and_flagged(redis) == (200, 100)


async def test_two_agents_whose_scripts_reach_redis_together(redis_server: RedisServer) -> None:
    # Both scripts are written while Redis is stopped, so both wait in its sockets; it then runs them in an
    # order of its own choosing, which must not matter.
    url = redis_server.start()
    assert redis_server.process is not None
    events = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
    clients = [gated_client(url, gate, sent) for gate, sent in events]
    plain = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        for client, (gate, sent) in zip(clients, events, strict=True):
            gate.set()
            await review(client, entries([priced(10**6, "1.00", "1.00")]))  # connected, script loaded
            gate.clear()
            sent.clear()
        await plain.flushdb()
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.create_task(review(c, batch)) for c, batch in zip(clients, (FIRST, SECOND), strict=True)]
            for gate, sent in events:
                gate.set()
                await asyncio.wait_for(sent.wait(), timeout=30)
            assert not any(task.done() for task in tasks)  # both written, neither answered
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        a, b = await asyncio.gather(*tasks)

        assert a.counted + b.counted == 200
        assert a.duplicates + b.duplicates == 100
        assert {a.counted, b.counted} in ({150, 50}, {100, 150})  # whichever ran first counted its whole batch
        assert a.flagged + b.flagged == 100
        assert await flagged_ids(plain) == ODD
        assert await reviewed_and_flagged(plain) == (200, 100)
    finally:
        for client in (*clients, plain):
            await client.aclose()


async def test_written_but_not_acknowledged_then_reclaimed_by_another_agent(redis: aioredis.Redis) -> None:
    # Agent A's write committed but its entries stayed pending (A died before acknowledging, as an agent of the
    # previous version could, whose XACK followed its script). Agent B takes them over and handles them again.
    await publish(redis, BIDS)
    agent_a = GroupReader(redis, audit_group("a"))
    await agent_a.ensure_group()
    batch = await agent_a.read()
    await review(redis, batch, acknowledge=None)  # the write, without the acknowledgement
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 200

    agent_b = GroupReader(redis, audit_group("b"))
    reclaimed = await agent_b.reclaim()
    assert len(reclaimed) == 200
    again = await review(redis, reclaimed, acknowledge=reclaimed)

    assert (again.counted, again.duplicates) == (0, 200)
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 0
    assert await flagged_ids(redis) == ODD
    assert await reviewed_and_flagged(redis) == (200, 100)


async def test_reply_lost_after_the_write_then_the_batch_is_retried(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The script ran (counted, flagged, acknowledged) but its reply never reached the agent: the bridge sees a
    # failed handler and runs it again on the same batch.
    await publish(redis, BIDS)
    reader = GroupReader(redis, audit_group("a"))
    await reader.ensure_group()
    batch = await reader.read()
    calls: list[int] = []
    execute = audit_store.execute_packed

    async def reply_lost_once(*args: Any, **kwargs: Any) -> list[Any]:
        replies = await execute(*args, **kwargs)
        calls.append(len(replies))
        if len(calls) == 1:
            raise RedisConnectionError("connection lost while reading the reply")
        return replies

    monkeypatch.setattr(audit_store, "execute_packed", reply_lost_once)
    results = []

    async def handler(b: Batch) -> None:
        results.append(await review(redis, b, acknowledge=b))
        b.mark_acknowledged()

    await handle_until_done(reader, handler, batch)

    assert len(calls) == 2  # failed once, retried once
    assert (results[0].counted, results[0].duplicates) == (0, 200)  # the retry found every bid counted
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 0
    assert await flagged_ids(redis) == ODD
    assert await reviewed_and_flagged(redis) == (200, 100)


# --- A real agent process, killed in the middle of a backlog ----------------------------------------------------


def _group(client: sync_redis.Redis) -> dict[str, Any] | None:
    try:
        return next((g for g in client.xinfo_groups(BIDS_PRICED) if g["name"] == AUDIT_GROUP), None)
    except sync_redis.ResponseError:
        return None


def _wait(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


@pytest.fixture
def agents(redis_server: RedisServer) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    url = redis_server.start()
    processes: list[subprocess.Popen[bytes]] = []
    yield url, processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()


def start_agent(url: str, consumer_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {"REDIS_URL": url, "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused", **consumer_env}
    return subprocess.Popen(
        [sys.executable, "-m", "bidengine.cli", "audit-agent"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_agent_killed_in_a_backlog_then_another_finishes_it(
    agents: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    url, processes = agents
    client = aioredis.Redis.from_url(url, decode_responses=True)
    check = sync_redis.Redis.from_url(url, decode_responses=True)
    now = datetime.now(UTC)  # the agents judge age by the wall clock
    published: list[PricedBid] = []

    async def publish_more(count: int) -> None:
        start = len(published) + 1
        more = [
            priced(i, "1.00", "2.00" if i % 2 else "1.10", product_id=i % 50, at=now)
            for i in range(start, start + count)
        ]
        await publish(client, more)
        published.extend(more)

    try:
        await publish_more(5_000)
        tuning = {"AUDIT_BATCH_SIZE": "100", "CLAIM_IDLE_MS": "200", "AUDIT_REPORT_CRON": "0 0 1 1 *"}
        first = start_agent(url, tuning)
        processes.append(first)
        # Freeze the first agent while it holds entries it has not acknowledged (wherever it is in a batch:
        # decoding, its script in flight, or between batches), then kill it. A fast agent that drained everything
        # before it could be caught gets more bids.
        while True:
            _wait(lambda: ((g := _group(check)) is not None and int(g["pending"]) > 0) or _drained(check), "a read")
            if _drained(check):
                await publish_more(2_000)
                continue
            first.send_signal(signal.SIGSTOP)
            if int(_group(check)["pending"]) > 0:  # type: ignore[index]  # stable: the agent is frozen
                break
            first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
        await publish_more(2_000)  # and the backlog goes on

        processes.append(start_agent(url, tuning))
        _wait(lambda: _drained(check) and (_group(check) or {}).get("last-delivered-id") == _last_id(check), "drain")

        total = len(published)
        assert await reviewed_and_flagged(client, now=now) == (total, total // 2)
        assert await flagged_ids(client) == list(range(1, total + 1, 2))
    finally:
        await client.aclose()
        check.close()


def _last_id(client: sync_redis.Redis) -> str:
    return str(client.xinfo_stream(BIDS_PRICED)["last-generated-id"])


def _drained(client: sync_redis.Redis) -> bool:
    """Every entry delivered to the audit group and acknowledged."""
    group = _group(client)
    return group is not None and group["last-delivered-id"] == _last_id(client) and int(group["pending"]) == 0
