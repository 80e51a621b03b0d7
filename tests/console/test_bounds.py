"""A backend that accepts connections and never answers gives every page a clear message within the deadline."""

from __future__ import annotations

import time

import asyncpg
from aiohttp import ClientTimeout

from console.context import BACKENDS
from console.security import COOKIE_NAME

from .conftest import Console, ConsoleFactory, create_user

DEADLINE_S = 0.5
# Generous: the point is "answers, with the message" rather than "hangs"; CPU here is shared.
ANSWERED_WITHIN_S = 10 * DEADLINE_S

REDIS_PAGES = ("/", "/flags", "/reports", "/aggregates", "/pipeline", "/competitors", "/reports/1-0")


async def logged_in_elsewhere(make_console: ConsoleFactory, users_db: asyncpg.Pool, **backends: str) -> Console:
    """A console on hanging backends, with the session cookie of a healthy console sharing its key."""
    healthy: Console = await make_console(console_backend_timeout_s=DEADLINE_S)
    await create_user(users_db, "olivia", "operator")
    assert (await healthy.login("olivia")).status == 303
    cookie = next(c for c in healthy.client.session.cookie_jar if c.key == COOKIE_NAME)
    broken: Console = await make_console(
        console_backend_timeout_s=DEADLINE_S, console_session_key=healthy.settings.console_session_key, **backends
    )
    broken.client.session.cookie_jar.update_cookies({COOKIE_NAME: cookie.value}, broken.client.make_url("/"))
    return broken


async def timed_get(console: Console, path: str) -> tuple[int, str, float]:
    started = time.monotonic()
    response = await console.client.get(path, allow_redirects=False, timeout=ClientTimeout(total=30))
    body = await response.text()
    return response.status, body, time.monotonic() - started


async def test_silent_redis(make_console: ConsoleFactory, users_db: asyncpg.Pool, silent_server: str) -> None:
    console = await logged_in_elsewhere(make_console, users_db, redis_at=f"redis://{silent_server}/0")
    for path in REDIS_PAGES:
        status, body, took = await timed_get(console, path)
        assert status == 503, (path, status)
        assert f"Redis did not answer within {DEADLINE_S:g} s" in body, path
        assert took < ANSWERED_WITHIN_S, (path, took)
    status, body, took = await timed_get(console, "/flags/feed?after=0-0")
    assert status == 503
    assert "Redis did not answer" in body
    # The PostgreSQL page still works, and a bid's detail says its flag could not be looked up.
    row = await users_db.fetchrow(
        "INSERT INTO bidding_productbid (product_id, current_cpc, target_roas, adjusted_cpc, request_id) "
        "VALUES (1, 1, 150, 1.5, gen_random_uuid()) RETURNING id"
    )
    assert row is not None
    status, body, took = await timed_get(console, "/bids")
    assert status == 200
    status, body, took = await timed_get(console, f"/bids/{row['id']}")
    assert status == 503
    assert "Bid #" in body
    assert "Redis did not answer" in body


async def test_login_refused_while_redis_is_silent(
    make_console: ConsoleFactory, users_db: asyncpg.Pool, silent_server: str
) -> None:
    """No rate limit, no login: a guess that cannot be counted is not checked."""
    console: Console = await make_console(console_backend_timeout_s=DEADLINE_S, redis_at=f"redis://{silent_server}/0")
    await create_user(users_db, "olivia", "operator")
    started = time.monotonic()
    response = await console.login("olivia")
    assert response.status == 503
    assert "Logging in is unavailable: Redis did not answer" in await response.text()
    assert time.monotonic() - started < ANSWERED_WITHIN_S


async def test_silent_postgresql(make_console: ConsoleFactory, users_db: asyncpg.Pool, silent_server: str) -> None:
    console = await logged_in_elsewhere(
        make_console, users_db, database_at=f"postgresql://postgres@{silent_server}/postgres"
    )
    for path in ("/bids", "/bids/1", "/bids?q=00000000-0000-0000-0000-000000000000"):
        status, body, took = await timed_get(console, path)
        assert status == 503, (path, status, body)
        assert "PostgreSQL did not answer within" in body, (path, body)
        assert "Read-only until PostgreSQL answers" in body, "the session could not be re-checked either"
        assert took < ANSWERED_WITHIN_S * 2, (path, took)
    # Redis pages still open (read-only), with the warning; the home page shows what Redis knows.
    status, body, _ = await timed_get(console, "/flags")
    assert status == 200
    status, body, _ = await timed_get(console, "/")
    assert status == 503
    assert "flags today" in body
    assert "PostgreSQL did not answer" in body
    # State changes are refused while the session cannot be re-checked.
    response = await console.client.post(
        "/pipeline/dead/bids:dead/1-0/purge", data={"csrf_token": "x"}, allow_redirects=False
    )
    assert response.status == 503


async def test_slow_statement_is_cancelled_by_the_deadline(
    make_console: ConsoleFactory, users_db: asyncpg.Pool
) -> None:
    """PostgreSQL itself stops a query nobody waits for (statement_timeout = the deadline)."""
    console: Console = await make_console(console_backend_timeout_s=DEADLINE_S)
    backends = console.client.app[BACKENDS]
    started = time.monotonic()
    outcome = await backends.db_outcome(lambda conn: conn.fetchval("SELECT pg_sleep(30)"))
    assert outcome.error == f"PostgreSQL did not answer within {DEADLINE_S:g} s"
    assert time.monotonic() - started < ANSWERED_WITHIN_S
    busy = await users_db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bidengine-console' AND query LIKE '%pg_sleep%'"
        " AND state = 'active'"
    )
    assert busy == 0
