"""Replay and purge of dead letters: roles, CSRF, confirmation, atomicity, idempotence, the action log."""

from __future__ import annotations

import asyncio
import json
import re

import asyncpg
from redis import asyncio as aioredis

from console import dead_letters
from schema.keys import BID_REQUESTS, BIDS_DEAD_LETTER

from . import seed
from .conftest import Console


def action_url(entry_id: str, action: str) -> str:
    return f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry_id}/{action}"


async def actions(db: asyncpg.Pool) -> list[tuple[str, str, str, str]]:
    rows = await db.fetch("SELECT user_name, action, target, outcome FROM console_actions ORDER BY id")
    return [tuple(row.values()) for row in rows]  # type: ignore[misc]


async def test_operator_replays_after_confirming(
    operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    original = seed.request_fields(7, 1.5, 150.0)
    entry = await seed.add_dead_letter(redis, original, "not stored: check constraint")
    pipeline_page = await (await operator.get("/pipeline")).text()
    assert f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action=replay" in pipeline_page
    confirm = await operator.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action=replay")
    body = await confirm.text()
    assert confirm.status == 200
    assert f'action="{action_url(entry, "replay")}"' in body, "the confirmation is a form that POSTs"
    assert await redis.xlen(BIDS_DEAD_LETTER) == 1, "viewing the confirmation changes nothing"

    token = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert token
    done = await operator.client.post(action_url(entry, "replay"), data={"csrf_token": token.group(1)})
    assert done.status == 200, await done.text()
    assert await redis.xlen(BIDS_DEAD_LETTER) == 0
    replayed = await redis.xrange(BID_REQUESTS)
    assert [fields for _, fields in replayed] == [original]
    assert await actions(users_db) == [("olivia", "replay", f"{BIDS_DEAD_LETTER} {entry}", "done")]

    again = await operator.post_form(action_url(entry, "replay"), {})
    assert again.status == 409, "a second replay finds the entry gone and appends nothing"
    assert await redis.xlen(BID_REQUESTS) == 1
    log = await (await operator.get("/pipeline")).text()
    assert "olivia" in log.split("Operator actions")[1]


async def test_concurrent_replays_append_once(redis: aioredis.Redis) -> None:
    entry = await seed.add_dead_letter(redis, seed.request_fields(7, 1.5, 150.0), "x")
    letter = await dead_letters.show(redis, BIDS_DEAD_LETTER, entry)
    assert letter is not None
    results = await asyncio.gather(*(dead_letters.replay(redis, letter) for _ in range(5)))
    assert sum(result is not None for result in results) == 1
    assert await redis.xlen(BID_REQUESTS) == 1


async def test_purge(operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool) -> None:
    keep = await seed.add_dead_letter(redis, seed.request_fields(7, 1.5, 150.0), "keep")
    entry = await seed.add_dead_letter(redis, seed.request_fields(8, 1.5, 150.0), "drop")
    confirm = await (await operator.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action=purge")).text()
    assert action_url(entry, "purge") in confirm
    done = await operator.post_form(action_url(entry, "purge"), {}, csrf_from="/pipeline")
    assert done.status == 200
    assert [e for e, _ in await redis.xrange(BIDS_DEAD_LETTER)] == [keep]
    assert await redis.xlen(BID_REQUESTS) == 0
    assert (await actions(users_db))[-1][1:] == ("purge", f"{BIDS_DEAD_LETTER} {entry}", "done")


async def test_viewer_cannot_replay_or_purge(viewer: Console, redis: aioredis.Redis, users_db: asyncpg.Pool) -> None:
    entry = await seed.add_dead_letter(redis, seed.request_fields(7, 1.5, 150.0), "x")
    page = await (await viewer.get("/pipeline")).text()
    assert "?action=replay" not in page
    for action in ("replay", "purge"):
        assert (await viewer.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action={action}")).status == 403
        refused = await viewer.post_form(action_url(entry, action), {})
        assert refused.status == 403
        assert "Only operators" in await refused.text()
    assert await redis.xlen(BIDS_DEAD_LETTER) == 1
    assert await redis.xlen(BID_REQUESTS) == 0
    assert [a[3] for a in await actions(users_db)] == ["refused", "refused"], "refusals are recorded too"


async def test_forged_post_without_csrf_token_is_refused(
    operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    entry = await seed.add_dead_letter(redis, seed.request_fields(7, 1.5, 150.0), "x")
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        response = await operator.client.post(action_url(entry, "purge"), data=data, allow_redirects=False)
        assert response.status == 403
        assert "did not come from the console" in await response.text()
    json_body = await operator.client.post(action_url(entry, "purge"), json={"csrf_token": "x"})
    assert json_body.status == 403
    assert await redis.xlen(BIDS_DEAD_LETTER) == 1
    assert await actions(users_db) == []


async def test_a_token_from_another_session_is_refused(
    operator: Console, make_console: object, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    entry = await seed.add_dead_letter(redis, seed.request_fields(7, 1.5, 150.0), "x")
    other: Console = await make_console(console_session_key=operator.settings.console_session_key)  # type: ignore[operator]
    stolen = await other.csrf()
    response = await operator.client.post(action_url(entry, "purge"), data={"csrf_token": stolen})
    assert response.status == 403
    assert await redis.xlen(BIDS_DEAD_LETTER) == 1


async def test_unreplayable_entries_are_refused_and_kept(operator: Console, redis: aioredis.Redis) -> None:
    entry = str(
        await redis.xadd(
            BIDS_DEAD_LETTER, {"entry_id": "1-0", "stream": BID_REQUESTS, "reason": "x", "fields": json.dumps([1])}
        )
    )
    confirm = await (await operator.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action=replay")).text()
    assert "cannot be replayed" in confirm
    response = await operator.post_form(action_url(entry, "replay"), {})
    assert response.status == 422
    assert await redis.xlen(BIDS_DEAD_LETTER) == 1
    assert await redis.xlen(BID_REQUESTS) == 0


async def test_unknown_streams_and_ids_are_404(operator: Console) -> None:
    assert (await operator.get("/pipeline/dead/bids:requests/1-0")).status == 404
    assert (await operator.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/1-0")).status == 404
    assert (await operator.get(f"/pipeline/dead/{BIDS_DEAD_LETTER}/abc")).status == 404
    assert (await operator.post_form(f"/pipeline/dead/{BIDS_DEAD_LETTER}/1-0/explode", {})).status == 404
    gone = await operator.post_form(action_url("1-0", "purge"), {})
    assert gone.status == 409
