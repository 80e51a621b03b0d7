"""`bidengine console-user add|list|disable|enable|password`: the console's users, managed from a shell.

There are no default credentials: the first user is created here. A password is prompted twice (getpass, not
echoed) on a terminal, or read as the first line of standard input otherwise (for scripts:
`printf '%s\\n' "$PASSWORD" | bidengine console-user add alice --role operator`); it never appears on the
command line, where `ps` and shell histories would show it.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Callable
from typing import TextIO

import asyncpg

from console.users import (
    Passwords,
    UserError,
    add_user,
    check_name,
    check_password,
    check_role,
    list_users,
    set_enabled,
    set_password,
)
from schema.database import apply_migrations
from schema.settings import Settings

ACTIONS = ("add", "list", "disable", "enable", "password")


def read_password(
    name: str,
    *,
    min_length: int,
    stdin: TextIO | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    source = stdin if stdin is not None else sys.stdin
    if source.isatty():
        first = prompt(f"password for {name}: ")
        if prompt("again: ") != first:
            raise UserError("the two passwords differ")
        password = first
    else:
        password = source.readline().rstrip("\r\n")
    return check_password(password, name=name, min_length=min_length)


def main(settings: Settings, action: str, name: str | None, role: str | None, *, stdin: TextIO | None = None) -> int:
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is required for `bidengine console-user`")
    database_url = settings.database_url
    try:
        if action != "list" and not name:
            raise UserError(f"`console-user {action}` needs a user name")
        if role is not None and action != "add":
            raise UserError("--role is only for `console-user add`")
        if action == "add":
            check_role(role or "viewer")
        apply_migrations(database_url)
        password_hash = None
        if action in ("add", "password"):
            assert name is not None
            check_name(name)
            password = read_password(name, min_length=settings.console_password_min_length, stdin=stdin)
            password_hash = Passwords().hash_sync(password)
        return asyncio.run(_run(database_url, action, name, role or "viewer", password_hash))
    except UserError as exc:
        print(f"console-user: {exc}", file=sys.stderr)
        return 2


async def _run(database_url: str, action: str, name: str | None, role: str, password_hash: str | None) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if action == "list":
            users = await list_users(conn)
            print(f"{'name':<24}{'role':<10}{'enabled':<9}{'created':<27}last login")
            for user in users:
                last = user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "never"
                print(
                    f"{user.name:<24}{user.role:<10}{'yes' if user.enabled else 'no':<9}"
                    f"{user.created_at.isoformat(timespec='seconds'):<27}{last}"
                )
            return 0
        assert name is not None
        if action == "add":
            assert password_hash is not None
            user = await add_user(conn, check_name(name), check_role(role), password_hash)
            print(f"user {user.name} added ({user.role})")
        elif action == "password":
            assert password_hash is not None
            await set_password(conn, name, password_hash)
            print(f"password of {name} changed; their sessions have ended")
        else:
            await set_enabled(conn, name, action == "enable")
            print(f"user {name} {action}d" + ("; their sessions have ended" if action == "disable" else ""))
        return 0
    finally:
        await conn.close()
