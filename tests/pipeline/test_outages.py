"""Outages under load, with real processes and servers of the test's own: Redis stopped for 15 s and started
empty, PostgreSQL restarted, every role started while both are down, the last pricing agent killed.

What must hold (README, "Operations"): no role exits or is restarted (same pids), the agents stay alive (fresh
heartbeat) and say they are not ready, bids flow again once the backends are back, every 200 has exactly one
row, and a retried key returns its first bid id. Waits are on conditions; the only fixed durations are the
outages themselves. Figures (time to recover, what the clients saw) are printed: run with `-s`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as sync_redis

from schema import keys
from schema.database import BIDS_TABLE, apply_migrations
from tests.pipeline.conftest import ROOT, Pipeline, wait_until_ready
from tests.pipeline.outage_support import (
    AGENTS,
    KeyedLoad,
    System,
    check_every_200_has_its_row,
    log_entries,
    outage_lines,
)
from tests.pipeline.test_failures import poll, post_bid
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow

REDIS_OUTAGE_S = 15.0
POSTGRES_OUTAGE_S = 5.0
LIVENESS_MAX_AGE_S = 30.0  # the chart's `bidengine probe <agent>` threshold


def probe(agent: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidengine.cli", "probe", agent, *args],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def hold_outage(system: System, seconds: float, since: float) -> None:
    """Keep the outage for `seconds`, checking all along that every role lives and every agent beats."""
    while time.monotonic() - since < seconds:
        system.assert_all_alive()
        for agent in AGENTS:
            age, _ = system.heartbeat(agent)
            assert age < LIVENESS_MAX_AGE_S, f"{agent}'s heartbeat is {age:.0f} s old: its pod would be restarted"
        time.sleep(0.5)


def assert_outage_logged_once(system: System, roles: list[str]) -> None:
    """One line when an outage starts and one when it ends, per loop that met it (not one per retry).

    A periodic loop (the stream trim runs every TRIM_INTERVAL_S) logs its recovery on its next run, which may
    come after the bids flow again: wait for every loop's end line, then check none logged more than one of each.
    """
    for role in roles:

        def every_outage_ended(role: str = role) -> dict[str, tuple[int, int]] | None:
            lines = outage_lines(system.log(role))
            return lines if lines and all(recovered >= 1 for _, recovered in lines.values()) else None

        lines = poll(f"{role} logging the end of every outage it logged", every_outage_ended, timeout_s=60)
        assert all(counts == (1, 1) for counts in lines.values()), (role, lines, system.log_tail(role))


def publish_failures_since(gateway_log: str, moment: datetime) -> list[dict[str, Any]]:
    """The gateway's "publishing a bid failed" lines (an XADD refused: a dead connection) logged after `moment`
    (UTC), each with the request id of the bid it refused."""
    failures = []
    for entry in log_entries(gateway_log):
        if str(entry.get("message", "")).startswith("publishing a bid failed"):
            assert entry.get("request_id"), entry
            if datetime.fromisoformat(entry["time"]) >= moment:
                failures.append(entry)
    return failures


def report(title: str, lines: list[str]) -> None:
    print(f"\n=== {title}")
    for line in lines:
        print(f"    {line}")


def test_redis_stopped_under_load_and_started_empty(
    redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    system = System.start(redis_server.start(), database_url, tmp_path)
    try:
        with KeyedLoad(system.gateway_url, name=f"redis-{uuid.uuid4().hex[:8]}", product_base=10_000_000) as load:
            poll("bids flowing", lambda: load.successes() >= 100, timeout_s=60)
            stopped = time.monotonic()
            redis_server.stop()
            poll("the gateway sees Redis gone", lambda: system.ready()[1].get("redis") is False)
            noticed = time.monotonic()
            hold_outage(system, REDIS_OUTAGE_S, stopped)
            for agent in AGENTS:
                # Not ready, and why: whichever loop met the outage (the read, or the batch in hand).
                _, state = system.heartbeat(agent)
                assert state is not None
                assert state["ready"] is False, state
                assert any("ConnectionError" in problem for problem in state["problems"]), state
            not_ready = probe("pricing-agent", tmp_path, "--ready")
            assert not_ready.returncode == 1
            assert "not ready" in not_ready.stderr
            assert probe("pricing-agent", tmp_path).returncode == 0  # alive: no restart
            assert system.monitor_health() == 503

            started = time.monotonic()
            redis_server.start()  # same port, empty: no streams, no groups
            poll("a 200 after Redis is back", lambda: load.first_success_after(started), timeout_s=60)
            first_200 = load.first_success_after(started)
            assert first_200 is not None
            system.wait_ready("the gateway and both agents ready")
            ready_again, ready_again_wall = time.monotonic(), datetime.now(UTC)  # as the logs' `time`
            poll("bids flowing again", lambda: load.successes(after=ready_again) >= 100, timeout_s=60)
            done = time.monotonic()
        figures = check_every_200_has_its_row(load, database_url)
        system.assert_all_alive()

        # The first requests after Redis is back succeed: no publish fails on a stale pooled connection.
        assert publish_failures_since(system.log("gateway"), ready_again_wall) == []
        # The audit agent recreated its group and counts again; the monitor publishes again.
        client = sync_redis.Redis.from_url(redis_server.url(), decode_responses=True)
        day_key = keys.audit_day_key(datetime.now(UTC).date())
        poll("the audit agent counting again", lambda: int(client.hget(day_key, "reviewed") or 0) >= 50)
        poll("the monitor publishing again", lambda: client.llen(keys.COMPETITOR_PRICES_LIST) > 0)
        poll("the monitor healthy again", lambda: system.monitor_health() == 200)
        client.close()
        assert_outage_logged_once(system, ["pricing-agent", "audit-agent", "gateway"])
        report(
            f"Redis stopped {REDIS_OUTAGE_S:.0f} s under load, started empty",
            [
                f"gateway noticed after {noticed - stopped:.1f} s",
                f"first 200 {first_200 - started:.2f} s after Redis started; gateway and agents ready after "
                f"{ready_again - started:.2f} s",
                f"{figures['bids']} bids, {figures['retried']} needed a retry, all stored once",
                f"before: {load.summary(0, stopped)}",
                f"during: {load.summary(stopped, started)}",
                f"after:  {load.summary(started, done)}",
            ],
        )
    finally:
        system.stop()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


def test_postgres_restarted_under_load(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database_url = postgres_server.url()
    apply_migrations(database_url)
    system = System.start(redis_server.start(), database_url, tmp_path)
    try:
        with KeyedLoad(system.gateway_url, name=f"pg-{uuid.uuid4().hex[:8]}", product_base=20_000_000) as load:
            poll("bids flowing", lambda: load.successes() >= 100, timeout_s=60)
            stopped = time.monotonic()
            postgres_server.stop()  # fast shutdown: every client is disconnected, as for a minor upgrade
            poll("the gateway sees PostgreSQL gone", lambda: system.ready()[1].get("postgres") is False)
            noticed = time.monotonic()
            hold_outage(system, POSTGRES_OUTAGE_S, stopped)
            started = time.monotonic()
            postgres_server.start()
            poll("a 200 after PostgreSQL is back", lambda: load.first_success_after(started), timeout_s=60)
            first_200 = load.first_success_after(started)
            assert first_200 is not None
            system.wait_ready("the gateway and both agents ready")
            ready_again = time.monotonic()
            poll("bids flowing again", lambda: load.successes(after=ready_again) >= 100, timeout_s=60)
            done = time.monotonic()
        figures = check_every_200_has_its_row(load, database_url)
        system.assert_all_alive()
        report(
            f"PostgreSQL stopped (fast) for {POSTGRES_OUTAGE_S:.0f} s under load, then started",
            [
                f"gateway noticed after {noticed - stopped:.1f} s",
                f"first 200 {first_200 - started:.2f} s after PostgreSQL started; all ready after "
                f"{ready_again - started:.2f} s",
                f"{figures['bids']} bids, {figures['retried']} needed a retry, all stored once",
                f"before: {load.summary(0, stopped)}",
                f"during: {load.summary(stopped, started)}",
                f"after:  {load.summary(started, done)}",
            ],
        )
    finally:
        system.stop()


def test_roles_started_while_redis_and_postgres_are_down_become_ready_once_they_are_up(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database_url = postgres_server.url()
    apply_migrations(database_url)
    postgres_server.stop()
    system = System.start(redis_server.url(), database_url, tmp_path, wait=False)  # Redis never started yet
    try:
        for agent in AGENTS:
            poll(f"{agent} alive, not ready", lambda agent=agent: system.heartbeat(agent)[1] is not None)
            _, state = system.heartbeat(agent)
            assert state is not None
            assert state["ready"] is False
            assert any("reading" in problem for problem in state["problems"]), state
        poll("the gateway answering 503", lambda: system.ready()[0] == 503)
        poll("the monitor answering 503", lambda: system.monitor_health() == 503)
        hold_outage(system, 5.0, time.monotonic())

        redis_up = time.monotonic()
        redis_server.start()
        poll("both agents ready", system.agents_ready, timeout_s=60)
        agents_ready = time.monotonic()
        assert probe("pricing-agent", tmp_path, "--ready").returncode == 0
        assert probe("audit-agent", tmp_path, "--ready").returncode == 0
        status, body = system.ready()
        assert status == 503
        assert body["postgres"] is False, body

        postgres_up = time.monotonic()
        postgres_server.start()
        wait_until_ready(system.gateway_url, timeout_s=60)
        gateway_ready = time.monotonic()
        status, _, answer = post_bid(system.pipeline, {"product_id": 31337, "current_cpc": 1.0, "target_roas": 100})
        assert status == 200, answer
        with psycopg.connect(database_url) as db:
            row = db.execute(f"SELECT product_id FROM {BIDS_TABLE} WHERE id = %s", (answer["bid_id"],)).fetchone()
        assert row == (31337,)
        poll("the monitor healthy", lambda: system.monitor_health() == 200)
        system.assert_all_alive()
        report(
            "every role started while Redis and PostgreSQL were down",
            [
                f"agents ready {agents_ready - redis_up:.2f} s after Redis started",
                f"gateway ready {gateway_ready - postgres_up:.2f} s after PostgreSQL started; first bid stored",
            ],
        )
    finally:
        system.stop()


def test_gateway_refuses_at_once_when_the_last_pricing_agent_dies(
    redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    redis_url = redis_server.start()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "CONSUMER_ALIVE_MS": "3000",
        "TMPDIR": str(tmp_path),
    }
    pipeline = Pipeline(redis_url, database_url, env)
    try:
        pipeline.start("pricing-agent", name="first")
        pipeline.start("pricing-agent", name="second")
        pipeline.start_gateway()
        poll("two pricing agents alive", lambda: get_ready(pipeline)[1]["pricing_consumers"] == 2)

        pipeline.kill("first")
        poll("one pricing agent alive", lambda: get_ready(pipeline)[1]["pricing_consumers"] == 1, timeout_s=15)
        assert get_ready(pipeline)[0] == 200
        status, _, body = post_bid(pipeline, {"product_id": 4242, "current_cpc": 1.5, "target_roas": 150})
        assert status == 200, body

        pipeline.kill("second")
        killed = time.monotonic()
        poll("/ready answering 503", lambda: get_ready(pipeline)[0] == 503, timeout_s=15)
        refused_after = time.monotonic() - killed
        status, body = get_ready(pipeline)
        assert body["problem"] == "no pricing agent is alive", body
        assert body["pricing_consumers"] == 0
        asked = time.monotonic()
        status, headers, answer = post_bid(pipeline, {"product_id": 4243, "current_cpc": 1.5, "target_roas": 150})
        answered_in = time.monotonic() - asked
        assert status == 503, answer
        assert int(headers["Retry-After"]) >= 1
        assert answer == {"errors": ["Service unavailable: no pricing agent is alive"]}

        pipeline.start("pricing-agent", name="successor")
        wait_until_ready(pipeline.gateway_url)
        status, _, body = post_bid(pipeline, {"product_id": 4244, "current_cpc": 1.5, "target_roas": 150})
        assert status == 200, body
        report(
            "the last pricing agent SIGKILLed (CONSUMER_ALIVE_MS=3000)",
            [f"/ready 503 after {refused_after:.2f} s", f"a bid then answered 503 in {answered_in * 1000:.0f} ms"],
        )
    finally:
        pipeline.stop_all()


def get_ready(pipeline: Pipeline) -> tuple[int, dict[str, object]]:
    from tests.pipeline.outage_support import get_json

    return get_json(f"{pipeline.gateway_url}/ready")
