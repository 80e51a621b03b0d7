"""The console in process (aiohttp's test server) against the session's real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, CookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from cryptography.fernet import Fernet
from redis import asyncio as aioredis

from console.app import build_app
from console.backends import Backends, connect_redis, create_pool
from console.users import Passwords, Role, add_user
from schema.settings import Settings

PASSWORD = "correct horse battery staple"
# Cheap argon2 parameters for tests (the console's own are argon2-cffi's defaults).
TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def console_settings(redis_url: str, database_url: str, **overrides: Any) -> Settings:
    base = Settings(
        redis_url=redis_url,
        database_url=database_url,
        console_session_key=Fernet.generate_key().decode(),
        console_backend_timeout_s=1.0,
        console_page_size=20,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def users_db(db: asyncpg.Pool) -> asyncpg.Pool:
    """The test database with no console users and an empty action log."""
    await db.execute("TRUNCATE console_users, console_actions RESTART IDENTITY")
    return db


async def create_user(db: asyncpg.Pool, name: str, role: Role, password: str = PASSWORD) -> int:
    async with db.acquire() as conn:
        user = await add_user(conn, name, role, TEST_HASHER.hash(password))
    return user.id


class Console:
    """A running console and a browser-like client (cookie jar, CSRF token scraped from the pages)."""

    def __init__(self, client: TestClient[Any, Any], settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def csrf(self, path: str = "/login") -> str:
        response = await self.client.get(path)
        found = CSRF_INPUT.search(await response.text())
        assert found, f"no CSRF token on {path}"
        return found.group(1)

    async def login(self, name: str, password: str = PASSWORD, **headers: str) -> ClientResponse:
        token = await self.csrf()
        return await self.client.post(
            "/login",
            data={"name": name, "password": password, "csrf_token": token, "next": "/"},
            allow_redirects=False,
            headers=headers,
        )

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.client.get(path, allow_redirects=False, **kwargs)

    async def post_form(self, path: str, data: dict[str, str], *, csrf_from: str = "/") -> ClientResponse:
        token = await self.csrf(csrf_from)
        return await self.client.post(path, data={**data, "csrf_token": token}, allow_redirects=False)


ConsoleFactory = Callable[..., Any]


@pytest.fixture
async def make_console(
    redis_url: str, database_url: str, users_db: asyncpg.Pool, redis: aioredis.Redis
) -> AsyncIterator[ConsoleFactory]:
    """Start consoles with settings overrides (and optionally other backend URLs); all closed after the test."""
    started: list[TestClient[Any, Any]] = []

    async def start(*, redis_at: str | None = None, database_at: str | None = None, **overrides: Any) -> Console:
        settings = console_settings(redis_at or redis_url, database_at or database_url, **overrides)
        assert settings.redis_url
        assert settings.database_url
        backends = Backends(
            connect_redis(settings.redis_url, settings),
            await create_pool(settings.database_url, settings),
            settings.console_backend_timeout_s,
        )
        app: web.Application = build_app(settings, backends, passwords=Passwords(2, TEST_HASHER))
        client = TestClient(TestServer(app), cookie_jar=CookieJar(unsafe=True))
        await client.start_server()
        started.append(client)
        return Console(client, settings)

    yield start
    for client in started:
        await client.close()


@pytest.fixture
async def console(make_console: ConsoleFactory) -> Console:
    console: Console = await make_console()
    return console


@pytest.fixture
async def operator(console: Console, users_db: asyncpg.Pool) -> Console:
    await create_user(users_db, "olivia", "operator")
    response = await console.login("olivia")
    assert response.status == 303, await response.text()
    return console


@pytest.fixture
async def viewer(console: Console, users_db: asyncpg.Pool) -> Console:
    await create_user(users_db, "victor", "viewer")
    response = await console.login("victor")
    assert response.status == 303, await response.text()
    return console


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a Redis or PostgreSQL that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
