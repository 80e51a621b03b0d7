"""Dead-letter streams: entries an agent gave up on, for on-call to list, show, replay or purge.

Each dead letter (`schema.events.DeadLetter`) keeps the original entry and the stream it came from. A replay
puts the original fields back on that stream as a new entry and deletes the dead letter, atomically (one Lua
script: a dead letter is replayed once, even by two operators at the same time, and never lost in between).
Replaying is safe for the consumers: the pricing agent stores a request id once, the audit agent counts a bid
once, so a replayed entry that had in fact been handled changes nothing.

`replay_all` and `purge_all` act on the letters present when they start: letters written meanwhile (a
replayed entry that fails again comes back as a new letter) are left for the next look.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from schema.events import DeadLetter, EventDecodeError

# KEYS[1] the dead-letter stream, KEYS[2] the stream to replay into; ARGV[1] the dead letter's id.
# Checks the letter still exists and still names KEYS[2] (the caller read it before), then moves it.
_REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local flat = found[1][2]
local letter = {}
for i = 1, #flat, 2 do
  letter[flat[i]] = flat[i + 1]
end
if letter['stream'] ~= KEYS[2] then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' no longer names ' .. KEYS[2])
end
local original = cjson.decode(letter['fields'])
local args = {}
for name, value in pairs(original) do
  args[#args + 1] = name
  args[#args + 1] = value
end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return new_id
"""


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as it sits in its stream: its own id, and the letter (or why it cannot be decoded)."""

    id: str
    letter: DeadLetter | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: dict[str, str]  # dead letter id -> id of the new entry in the source stream
    missing: list[str]  # ids that were not (or no longer) in the dead-letter stream
    failed: dict[str, str]  # dead letter id -> why it could not be replayed (left in place)


def _stored(entry_id: str, fields: dict[str, str] | None) -> StoredDeadLetter:
    if fields is None:
        return StoredDeadLetter(entry_id, None, "the entry has no fields")
    try:
        return StoredDeadLetter(entry_id, DeadLetter.from_fields(fields))
    except EventDecodeError as exc:
        return StoredDeadLetter(entry_id, None, str(exc))


async def count(redis: aioredis.Redis, stream: str) -> int:
    return int(await redis.xlen(stream))


async def list_letters(
    redis: aioredis.Redis, stream: str, *, limit: int, newest_first: bool = True, before: str | None = None
) -> list[StoredDeadLetter]:
    """At most `limit` dead letters, newest first by default; `before` pages on (exclusive id)."""
    raw: Any
    if newest_first:
        raw = await redis.xrevrange(stream, max=f"({before}" if before else "+", min="-", count=limit)
    else:
        raw = await redis.xrange(stream, min=f"({before}" if before else "-", max="+", count=limit)
    return [_stored(entry_id, fields) for entry_id, fields in raw]


async def show(redis: aioredis.Redis, stream: str, entry_id: str) -> StoredDeadLetter | None:
    raw: Any = await redis.xrange(stream, min=entry_id, max=entry_id)
    return _stored(*raw[0]) if raw else None


async def replay(redis: aioredis.Redis, stream: str, entry_ids: Iterable[str]) -> ReplayResult:
    """Put each dead letter's original entry back on its stream and delete the letter (each atomically)."""
    script = redis.register_script(_REPLAY)
    result = ReplayResult({}, [], {})
    for entry_id in entry_ids:
        stored = await show(redis, stream, entry_id)
        if stored is None:
            result.missing.append(entry_id)
            continue
        if stored.letter is None:
            result.failed[entry_id] = f"undecodable dead letter: {stored.problem}"
            continue
        if not stored.letter.fields:
            result.failed[entry_id] = "the original entry has no fields"
            continue
        new_id = await script(keys=[stream, stored.letter.stream], args=[entry_id])
        if new_id is None:  # purged or replayed by someone else since we read it
            result.missing.append(entry_id)
        else:
            result.replayed[entry_id] = str(new_id)
    return result


async def purge(redis: aioredis.Redis, stream: str, entry_ids: Iterable[str]) -> int:
    """Delete dead letters for good; returns how many existed."""
    ids = list(entry_ids)
    return int(await redis.xdel(stream, *ids)) if ids else 0


async def newest_id(redis: aioredis.Redis, stream: str) -> str | None:
    raw: Any = await redis.xrevrange(stream, max="+", min="-", count=1)
    return str(raw[0][0]) if raw else None


async def replay_all(redis: aioredis.Redis, stream: str, *, page: int = 100) -> ReplayResult:
    """Replay every letter present now, oldest first (see the module docstring)."""
    result = ReplayResult({}, [], {})
    last = await newest_id(redis, stream)
    cursor: str | None = None
    while last is not None:
        raw: Any = await redis.xrange(stream, min=f"({cursor}" if cursor else "-", max=last, count=page)
        if not raw:
            break
        ids = [str(entry_id) for entry_id, _ in raw]
        cursor = ids[-1]
        done = await replay(redis, stream, ids)
        result.replayed.update(done.replayed)
        result.missing.extend(done.missing)
        result.failed.update(done.failed)
        if cursor == last:
            break
    return result


async def purge_all(redis: aioredis.Redis, stream: str) -> int:
    """Delete every letter present now (one exact `XTRIM MINID`: letters written meanwhile are kept)."""
    last = await newest_id(redis, stream)
    if last is None:
        return 0
    ms, _, seq = last.partition("-")
    return int(await redis.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False))
