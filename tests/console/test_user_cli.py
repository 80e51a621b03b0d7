"""`bidengine console-user`: no default users, passwords from a prompt or stdin, disable and new passwords."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import asyncpg
import pytest

from console import user_cli
from console.users import Passwords
from schema.settings import Settings


class Stdin(io.StringIO):
    def __init__(self, text: str, *, tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


async def run(database_url: str, action: str, name: str | None, role: str | None = None, stdin: str = "") -> int:
    """The command's own `asyncio.run` needs a thread without a running loop."""
    return await asyncio.to_thread(
        user_cli.main, Settings(database_url=database_url), action, name, role, stdin=Stdin(stdin)
    )


async def test_add_list_disable_password(
    database_url: str, users_db: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await users_db.fetchval("SELECT count(*) FROM console_users") == 0, "no default users"
    assert await run(database_url, "add", "alice", "operator", "a long enough password\n") == 0
    assert await run(database_url, "add", "bob", None, "another long password\n") == 0
    row = await users_db.fetchrow("SELECT role, password_hash, enabled FROM console_users WHERE name = 'alice'")
    assert row is not None
    assert row["role"] == "operator"
    assert row["password_hash"].startswith("$argon2id$")
    assert "a long enough password" not in row["password_hash"]
    assert await Passwords().verify(row["password_hash"], "a long enough password")
    assert await users_db.fetchval("SELECT role FROM console_users WHERE name = 'bob'") == "viewer"
    capsys.readouterr()
    assert await run(database_url, "list", None) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing
    assert "operator" in listing
    assert "bob" in listing

    assert await run(database_url, "disable", "bob") == 0
    assert await users_db.fetchval("SELECT enabled FROM console_users WHERE name = 'bob'") is False
    assert await run(database_url, "enable", "bob") == 0
    epoch = await users_db.fetchval("SELECT session_epoch FROM console_users WHERE name = 'alice'")
    assert await run(database_url, "password", "alice", None, "a brand new password\n") == 0
    row = await users_db.fetchrow("SELECT password_hash, session_epoch FROM console_users WHERE name = 'alice'")
    assert row is not None
    assert await Passwords().verify(row["password_hash"], "a brand new password")
    assert row["session_epoch"] == epoch + 1, "existing sessions end"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "alice", "operator"), "short\n", "at least 12"),
        (("add", "alice", "operator"), "alice\n", "at least 12"),
        (("add", "Alice!", "operator"), "a long enough password\n", "user name"),
        (("add", "alice", "admin"), "a long enough password\n", "role must be"),
        (("password", "nobody", None), "a long enough password\n", "no user"),
        (("disable", None, None), "", "needs a user name"),
        (("disable", "alice", "operator"), "", "--role is only"),
    ],
)
async def test_refusals(  # noqa: PLR0917 - pytest fixtures and parameters
    database_url: str,
    users_db: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, str | None, str | None],
    stdin: str,
    message: str,
) -> None:
    assert await run(database_url, *args, stdin=stdin) == 2
    assert message in capsys.readouterr().err
    assert await users_db.fetchval("SELECT count(*) FROM console_users") == 0


async def test_duplicate_user(database_url: str, users_db: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(database_url, "add", "alice", "viewer", "a long enough password\n") == 0
    assert await run(database_url, "add", "alice", "operator", "a long enough password\n") == 2
    assert "already exists" in capsys.readouterr().err


def test_prompt_on_a_terminal_asks_twice() -> None:
    answers = iter(["a long enough password", "a long enough password"])
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    password = user_cli.read_password("alice", min_length=12, stdin=Stdin("", tty=True), prompt=prompt)
    assert password == "a long enough password"
    assert len(prompts) == 2
    mismatched = iter(["a long enough password", "another one entirely"])
    with pytest.raises(user_cli.UserError, match="differ"):
        user_cli.read_password("alice", min_length=12, stdin=Stdin("", tty=True), prompt=lambda _t: next(mismatched))


def test_the_command_line(database_url: str, users_db: asyncpg.Pool) -> None:
    """Through the real `bidengine` entry point, the password on stdin (never an argument)."""
    done = subprocess.run(
        [sys.executable, "-m", "bidengine.cli", "console-user", "add", "carol", "--role", "viewer"],
        input="a long enough password\n",
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "user carol added (viewer)" in done.stdout


def test_the_command_line_offers_every_action() -> None:
    from bidengine.cli import CONSOLE_USER_ACTIONS

    assert CONSOLE_USER_ACTIONS == user_cli.ACTIONS
