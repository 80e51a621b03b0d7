"""The console's users in PostgreSQL (`console_users`, migration 0010) and their password hashes.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile: 64 MiB, 3 passes)
and re-hashed on login when those parameters change. Hashing runs in a thread, at most
`CONSOLE_HASH_CONCURRENCY` at once, so logins never stall the event loop nor use unbounded memory.

A login for an unknown or disabled user verifies the password against a dummy hash, so it takes as long as a
real one: response times do not reveal which names exist.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, cast

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["viewer", "operator"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator")
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# argon2 takes any length, but a megabyte "password" is a cheap way to burn CPU: refuse it before hashing.
MAX_PASSWORD_LENGTH: Final = 1024


class UserError(ValueError):
    """A user name, role or password that cannot be accepted (the message says why)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role
    enabled: bool
    session_epoch: int
    created_at: datetime
    last_login_at: datetime | None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError("a user name is 1-64 characters: lower-case letters, digits, '.', '_' or '-'")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    return role  # narrowed to Role by the membership test


def check_password(password: str, *, name: str, min_length: int) -> str:
    if len(password) < min_length:
        raise UserError(f"a password has at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == name.lower():
        raise UserError("the password must not be the user name")
    return password


class Passwords:
    """argon2id hashing off the event loop, bounded in concurrency."""

    def __init__(self, concurrency: int = 2, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(max(concurrency, 1))
        self._dummy: str | None = None

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches; with no hash (unknown user) a dummy is verified, and False returned."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        if stored_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("not a password: equalises the time of unknown-user logins")
            await self._verify(self._dummy, password)
            return False
        return await self._verify(stored_hash, password)

    async def _verify(self, stored_hash: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, stored_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True


_COLUMNS = "id, name, role, enabled, session_epoch, created_at, last_login_at"


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        role=cast(Role, row["role"]),
        enabled=row["enabled"],
        session_epoch=row["session_epoch"],
        created_at=row["created_at"],
        last_login_at=row["last_login_at"],
    )


async def add_user(conn: asyncpg.Connection, name: str, role: Role, password_hash: str) -> User:
    try:
        row = await conn.fetchrow(
            f"INSERT INTO console_users (name, role, password_hash) VALUES ($1, $2, $3) RETURNING {_COLUMNS}",
            name,
            role,
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise UserError(f"user {name!r} already exists (use `console-user password` to change it)") from None
    assert row is not None
    return _user(row)


async def list_users(conn: asyncpg.Connection) -> list[User]:
    return [_user(row) for row in await conn.fetch(f"SELECT {_COLUMNS} FROM console_users ORDER BY name")]


async def get_user(conn: asyncpg.Connection, user_id: int) -> User | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM console_users WHERE id = $1", user_id)
    return None if row is None else _user(row)


async def credentials(conn: asyncpg.Connection, name: str) -> tuple[User, str] | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS}, password_hash FROM console_users WHERE name = $1", name)
    return None if row is None else (_user(row), row["password_hash"])


async def set_password(conn: asyncpg.Connection, name: str, password_hash: str) -> None:
    """A new password ends every session of the user (their epoch moves on)."""
    status = await conn.execute(
        "UPDATE console_users SET password_hash = $2, session_epoch = session_epoch + 1, updated_at = now() "
        "WHERE name = $1",
        name,
        password_hash,
    )
    if status != "UPDATE 1":
        raise UserError(f"no user {name!r}")


async def set_enabled(conn: asyncpg.Connection, name: str, enabled: bool) -> None:
    """Disabling ends every session of the user at their next request."""
    status = await conn.execute(
        "UPDATE console_users SET enabled = $2, session_epoch = session_epoch + 1, updated_at = now() WHERE name = $1",
        name,
        enabled,
    )
    if status != "UPDATE 1":
        raise UserError(f"no user {name!r}")


async def record_login(conn: asyncpg.Connection, user_id: int, new_hash: str | None) -> None:
    """Stamp a successful login; store the re-computed hash when the hashing parameters changed."""
    if new_hash is None:
        await conn.execute("UPDATE console_users SET last_login_at = now() WHERE id = $1", user_id)
    else:
        # The epoch stays: re-hashing the same password must not end the user's other sessions.
        await conn.execute(
            "UPDATE console_users SET last_login_at = now(), password_hash = $2 WHERE id = $1", user_id, new_hash
        )
