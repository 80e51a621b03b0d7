"""Dead-letter streams against a real Redis: listing, replay (once, atomically), purge."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from redis_streams import dead_letters
from schema.events import DeadLetter

DEAD = "test:dead"
SOURCE = "test:source"


async def add_letters(redis: aioredis.Redis, count: int) -> list[str]:
    ids = []
    for i in range(count):
        letter = DeadLetter(f"{i + 1}-0", SOURCE, f"reason {i}", {"n": str(i), "request_id": f"r{i}"})
        ids.append(await redis.xadd(DEAD, letter.to_fields()))  # type: ignore[arg-type]
    return ids


async def test_lists_newest_first_and_pages_on(redis: aioredis.Redis) -> None:
    ids = await add_letters(redis, 5)
    first = await dead_letters.list_letters(redis, DEAD, limit=2)
    assert [s.id for s in first] == [ids[4], ids[3]]
    assert first[0].letter is not None
    assert first[0].letter.reason == "reason 4"
    rest = await dead_letters.list_letters(redis, DEAD, limit=10, before=first[-1].id)
    assert [s.id for s in rest] == [ids[2], ids[1], ids[0]]
    oldest = await dead_letters.list_letters(redis, DEAD, limit=1, newest_first=False)
    assert [s.id for s in oldest] == [ids[0]]
    assert await dead_letters.count(redis, DEAD) == 5


async def test_replay_moves_the_original_entry_back_once(redis: aioredis.Redis) -> None:
    ids = await add_letters(redis, 2)
    result = await dead_letters.replay(redis, DEAD, [ids[0], "0-1"])
    assert set(result.replayed) == {ids[0]}
    assert result.missing == ["0-1"]
    [(new_id, fields)] = await redis.xrange(SOURCE)
    assert new_id == result.replayed[ids[0]]
    assert fields == {"n": "0", "request_id": "r0"}
    assert [s.id for s in await dead_letters.list_letters(redis, DEAD, limit=10)] == [ids[1]]


async def test_two_operators_replaying_at_once_replay_it_once(redis: aioredis.Redis, redis_url: str) -> None:
    [entry_id] = await add_letters(redis, 1)
    other = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        results = await asyncio.gather(
            *(dead_letters.replay(client, DEAD, [entry_id]) for client in (redis, other, redis, other))
        )
    finally:
        await other.aclose()
    assert sum(len(r.replayed) for r in results) == 1
    assert await redis.xlen(SOURCE) == 1
    assert await redis.xlen(DEAD) == 0


async def test_undecodable_letter_is_listed_and_left_in_place(redis: aioredis.Redis) -> None:
    entry_id = await redis.xadd(DEAD, {"entry_id": "1-0", "stream": SOURCE, "reason": "x", "fields": "not json"})
    [stored] = await dead_letters.list_letters(redis, DEAD, limit=10)
    assert stored.letter is None
    assert stored.problem is not None
    result = await dead_letters.replay(redis, DEAD, [entry_id])
    assert entry_id in result.failed
    assert await redis.xlen(DEAD) == 1
    assert await redis.exists(SOURCE) == 0


async def test_show_and_purge(redis: aioredis.Redis) -> None:
    ids = await add_letters(redis, 3)
    shown = await dead_letters.show(redis, DEAD, ids[1])
    assert shown is not None
    assert shown.letter is not None
    assert shown.letter.fields["n"] == "1"
    assert await dead_letters.show(redis, DEAD, "0-1") is None
    assert await dead_letters.purge(redis, DEAD, [ids[0], ids[1], "0-1"]) == 2
    assert await dead_letters.purge(redis, DEAD, []) == 0
    assert await redis.xlen(DEAD) == 1


async def test_replay_all_replays_the_letters_present_when_it_starts(redis: aioredis.Redis) -> None:
    ids = await add_letters(redis, 250)  # more than one page
    result = await dead_letters.replay_all(redis, DEAD, page=100)
    assert list(result.replayed) == ids
    assert result.missing == []
    assert result.failed == {}
    assert await redis.xlen(DEAD) == 0
    assert [f["n"] for _, f in await redis.xrange(SOURCE)] == [str(i) for i in range(250)]
    assert (await dead_letters.replay_all(redis, DEAD)).replayed == {}


async def test_replay_all_leaves_undecodable_letters_and_stops_at_its_snapshot(redis: aioredis.Redis) -> None:
    good = await add_letters(redis, 2)
    bad = await redis.xadd(DEAD, {"entry_id": "1-0", "stream": SOURCE, "reason": "x", "fields": "not json"})
    result = await dead_letters.replay_all(redis, DEAD)
    assert set(result.replayed) == set(good)
    assert set(result.failed) == {bad}
    assert [s.id for s in await dead_letters.list_letters(redis, DEAD, limit=10)] == [bad]


async def test_purge_all_deletes_the_letters_present_when_it_starts(redis: aioredis.Redis) -> None:
    assert await dead_letters.purge_all(redis, DEAD) == 0
    await add_letters(redis, 5)
    assert await dead_letters.purge_all(redis, DEAD) == 5
    assert await redis.xlen(DEAD) == 0
