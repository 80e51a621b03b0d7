"""Logging in and out, sessions (cookie flags, idle timeout, revocation), login rate limits."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie

import asyncpg
import pytest
from redis import asyncio as aioredis

from console import security
from console.server import main as console_main
from console.users import Passwords, set_enabled, set_password
from schema.keys import CONSOLE_LOGIN_ADDRESS_PREFIX, CONSOLE_LOGIN_USER_PREFIX

from .conftest import PASSWORD, TEST_HASHER, Console, ConsoleFactory, console_settings, create_user


def session_cookie(set_cookie: str) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(set_cookie)
    assert security.COOKIE_NAME in cookie
    return cookie


async def test_without_a_session_every_page_sends_to_login(console: Console) -> None:
    for path in ("/", "/flags", "/reports", "/aggregates", "/bids", "/bids/1", "/pipeline", "/competitors"):
        response = await console.get(path)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/login?next="), path
    feed = await console.get("/flags/feed")
    assert feed.status == 401
    assert (await feed.json())["errors"]


async def test_login_lands_on_the_page_asked_for(console: Console, users_db: asyncpg.Pool) -> None:
    await create_user(users_db, "alice", "viewer")
    first = await console.get("/pipeline?x=1")
    token = await console.csrf(first.headers["Location"])
    response = await console.client.post(
        "/login",
        data={"name": "Alice ", "password": PASSWORD, "csrf_token": token, "next": "/pipeline?x=1"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/pipeline?x=1"
    cookie = session_cookie(response.headers["Set-Cookie"])[security.COOKIE_NAME]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"], "plain HTTP: a Secure cookie would never come back"
    assert int(cookie["max-age"]) == console.settings.console_session_idle_s
    page = await console.get("/")
    assert page.status == 200
    assert "alice" in await page.text()


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"])
async def test_login_never_redirects_off_site(console: Console, users_db: asyncpg.Pool, target: str) -> None:
    await create_user(users_db, "alice", "viewer")
    token = await console.csrf()
    response = await console.client.post(
        "/login",
        data={"name": "alice", "password": PASSWORD, "csrf_token": token, "next": target},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/"


async def test_wrong_password_and_unknown_user_get_the_same_answer(console: Console, users_db: asyncpg.Pool) -> None:
    await create_user(users_db, "alice", "operator")
    await create_user(users_db, "dora", "operator")
    async with users_db.acquire() as conn:
        await set_enabled(conn, "dora", False)
    answers = []
    for name, password in (("alice", "wrong password!!"), ("nobody", PASSWORD), ("dora", PASSWORD)):
        response = await console.login(name, password)
        body = await response.text()
        answers.append((response.status, "Wrong user name or password." in body))
    assert answers == [(401, True)] * 3
    assert (await console.get("/")).status == 303, "no session after failed logins"


async def test_unknown_users_cost_a_password_verification(
    console: Console, users_db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shortcut for names that do not exist: the dummy hash is verified (same work as a real user)."""
    calls: list[str] = []
    original = Passwords._verify

    async def spy(self: Passwords, stored: str, password: str) -> bool:
        calls.append(stored)
        return await original(self, stored, password)

    monkeypatch.setattr(Passwords, "_verify", spy)
    await console.login("nobody", PASSWORD)
    assert len(calls) == 1
    assert calls[0].startswith("$argon2id$")


async def test_rate_limit_per_user_name(
    make_console: ConsoleFactory, users_db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    console: Console = await make_console(console_login_max_failures_per_user=3)
    await create_user(users_db, "alice", "operator")
    statuses = [(await console.login("alice", "wrong password!!")).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    refused = await console.login("alice")  # the right password, but the name is locked for the window
    assert refused.status == 429
    assert "Too many login attempts" in await refused.text()
    assert 0 < int(refused.headers["Retry-After"]) <= console.settings.console_login_window_s
    keys = [key async for key in redis.scan_iter(f"{CONSOLE_LOGIN_USER_PREFIX}*")]
    assert len(keys) == 1
    assert 0 < await redis.ttl(keys[0]) <= console.settings.console_login_window_s
    await create_user(users_db, "bob", "viewer")
    assert (await console.login("bob")).status == 303, "other names are not affected"
    await redis.delete(keys[0])  # the window passed
    assert (await console.login("alice")).status == 303


async def test_rate_limit_per_address(
    make_console: ConsoleFactory, users_db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    console: Console = await make_console(console_login_max_attempts_per_address=4)
    await create_user(users_db, "alice", "operator")
    statuses = [(await console.login(f"name{i}", "wrong password!!")).status for i in range(4)]
    assert statuses == [401] * 4
    assert (await console.login("alice")).status == 429, "password spraying across names is limited too"
    keys = [key async for key in redis.scan_iter(f"{CONSOLE_LOGIN_ADDRESS_PREFIX}*")]
    assert keys == [f"{CONSOLE_LOGIN_ADDRESS_PREFIX}127.0.0.1"]
    assert await redis.ttl(keys[0]) > 0


async def test_successful_login_clears_the_user_counter(console: Console, users_db: asyncpg.Pool) -> None:
    await create_user(users_db, "alice", "operator")
    for _ in range(console.settings.console_login_max_failures_per_user - 1):
        await console.login("alice", "wrong password!!")
    assert (await console.login("alice")).status == 303
    assert (await console.login("alice", "wrong password!!")).status == 401, "counting starts again"


async def test_idle_session_expires(operator: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await operator.get("/")).status == 200
    idle = operator.settings.console_session_idle_s
    later = time.time() + idle + 5
    monkeypatch.setattr(security.time, "time", lambda: later)
    response = await operator.get("/")
    assert response.status == 303
    # Refused twice over: the Fernet token is older than its TTL, and the session's own `seen` stamp.
    assert response.headers["Location"].startswith("/login?next=/")


async def test_background_polls_do_not_keep_a_session_alive(operator: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.time()
    idle = operator.settings.console_session_idle_s
    for step in range(1, 6):  # a Flags page left open: a poll every idle/4 seconds, nobody using it
        moment = start + step * idle / 4
        monkeypatch.setattr(security.time, "time", lambda moment=moment: moment)
        response = await operator.get("/flags/feed")
        if step <= 3:
            assert response.status == 200, step
    assert response.status == 401


async def test_disabling_a_user_ends_their_session(
    operator: Console, users_db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await operator.get("/")).status == 200
    async with users_db.acquire() as conn:
        await set_enabled(conn, "olivia", False)
    monkeypatch.setattr(security, "USER_RECHECK_S", 0.0)  # instead of waiting for the cached check to age
    response = await operator.get("/")
    assert response.status == 303
    assert "ended" in response.headers["Location"]


async def test_a_new_password_ends_existing_sessions(
    operator: Console, users_db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with users_db.acquire() as conn:
        await set_password(conn, "olivia", TEST_HASHER.hash("another long password"))
    monkeypatch.setattr(security, "USER_RECHECK_S", 0.0)
    assert (await operator.get("/")).status == 303
    assert (await operator.login("olivia", "another long password")).status == 303


async def test_logout_needs_the_csrf_token(operator: Console) -> None:
    forged = await operator.client.post("/logout", data={}, allow_redirects=False)
    assert forged.status == 403
    assert (await operator.get("/")).status == 200, "still logged in"
    response = await operator.post_form("/logout", {})
    assert response.status == 303
    assert (await operator.get("/")).status == 303


async def test_a_tampered_cookie_is_no_session(operator: Console) -> None:
    cookie = next(c for c in operator.client.session.cookie_jar if c.key == security.COOKIE_NAME)
    value = cookie.value
    middle = len(value) // 2  # a character whose every bit counts (the last ones may be base64 padding bits)
    tampered = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]
    operator.client.session.cookie_jar.clear()
    operator.client.session.cookie_jar.update_cookies({security.COOKIE_NAME: tampered}, operator.client.make_url("/"))
    assert (await operator.get("/")).status == 303


async def test_secure_cookie_and_hsts_behind_a_tls_proxy(make_console: ConsoleFactory, users_db: asyncpg.Pool) -> None:
    await create_user(users_db, "alice", "viewer")
    trusted: Console = await make_console(console_trust_forwarded=True)
    response = await trusted.login("alice", **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert response.status == 303
    assert session_cookie(response.headers["Set-Cookie"])[security.COOKIE_NAME]["secure"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")

    untrusted: Console = await make_console()
    response = await untrusted.login("alice", **{"X-Forwarded-Proto": "https"})
    assert not session_cookie(response.headers["Set-Cookie"])[security.COOKIE_NAME]["secure"]
    assert "Strict-Transport-Security" not in response.headers


async def test_forwarded_address_is_the_proxys_last_hop(
    make_console: ConsoleFactory, users_db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    console: Console = await make_console(console_trust_forwarded=True)
    await console.login("alice", "x" * 12, **{"X-Forwarded-For": "10.9.9.9, 198.51.100.7"})
    keys = [key async for key in redis.scan_iter(f"{CONSOLE_LOGIN_ADDRESS_PREFIX}*")]
    assert keys == [f"{CONSOLE_LOGIN_ADDRESS_PREFIX}198.51.100.7"], "a client cannot pick its own address"


def test_refuses_to_start_without_a_session_key(redis_url: str, database_url: str) -> None:
    settings = console_settings(redis_url, database_url, console_session_key=None)
    with pytest.raises(SystemExit, match="CONSOLE_SESSION_KEY is required"):
        console_main(settings)
    with pytest.raises(SystemExit, match="not a Fernet key"):
        console_main(console_settings(redis_url, database_url, console_session_key="secret"))


def test_development_key_is_generated_once() -> None:
    from console.server import ensure_development_session_key

    environ: dict[str, str] = {}
    assert ensure_development_session_key(environ)
    key = environ["CONSOLE_SESSION_KEY"]
    assert security.session_fernet(key)
    assert not ensure_development_session_key(environ)
    assert environ["CONSOLE_SESSION_KEY"] == key
