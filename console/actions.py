"""The operator action log (`console_actions`, migration 0010): who did what, when, and how it went.

Every replay and purge is recorded, including the refused and the failed ones, before the page answers.
Rows older than `CONSOLE_ACTIONS_RETENTION_DAYS` are deleted in the same transaction as each new row (the
`at` index keeps that cheap), so the table stays bounded without a background job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class Action:
    id: int
    at: datetime
    user_name: str
    action: str
    target: str
    outcome: str
    detail: str


async def record(
    conn: asyncpg.Connection,
    *,
    user_name: str,
    action: str,
    target: str,
    outcome: str,
    detail: str = "",
    retention_days: int,
) -> int:
    async with conn.transaction():
        action_id: int = await conn.fetchval(
            "INSERT INTO console_actions (user_name, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING id",
            user_name,
            action,
            target[:500],
            outcome,
            detail[:2000],
        )
        await conn.execute("DELETE FROM console_actions WHERE at < now() - make_interval(days => $1)", retention_days)
    return action_id


async def finish(conn: asyncpg.Connection, action_id: int, outcome: str, detail: str) -> None:
    """The outcome of an action recorded as `started` before it was taken."""
    await conn.execute(
        "UPDATE console_actions SET outcome = $2, detail = $3 WHERE id = $1", action_id, outcome, detail[:2000]
    )


async def recent(conn: asyncpg.Connection, limit: int) -> list[Action]:
    rows = await conn.fetch(
        "SELECT id, at, user_name, action, target, outcome, detail FROM console_actions ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [Action(**dict(row)) for row in rows]
