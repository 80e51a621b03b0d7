"""Dead letters: list, show, replay and purge the entries of a dead-letter stream (`bids:dead`, docs/streams.md).

An entry holds `entry_id` (its id in the source stream), `stream` (the source), `reason`, and `fields` (the
original entry as JSON). Replaying appends the original fields to the source stream and deletes the dead
entry in one server-side script: atomic, and a second replay of the same entry (a double click, two operators)
finds it gone and does nothing. Replaying is safe even when a bid was stored meanwhile: the pricing agent
stores a request id once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from console import streams
from schema.keys import DEAD_LETTER_STREAMS

__all__ = ["DEAD_LETTER_STREAMS", "DeadLetter", "DeadLetterError", "count", "newest", "purge", "replay", "show"]

# Moves one entry: returns the new id in the source stream, or false when the dead entry is gone.
_REPLAY = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return false
end
local new_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return new_id
"""


class DeadLetterError(ValueError):
    """The entry cannot be replayed (unknown stream, or its `fields` are not a JSON object of strings)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream: str  # the dead-letter stream
    id: str  # the entry's id in it
    source: str  # the stream it came from
    source_id: str
    reason: str
    raw_fields: str  # `fields` as stored (JSON text)

    def original(self) -> dict[str, str]:
        try:
            fields = json.loads(self.raw_fields)
        except ValueError as exc:
            raise DeadLetterError(f"its fields are not JSON: {exc}") from None
        if not isinstance(fields, dict) or not fields:
            raise DeadLetterError("its fields are not a JSON object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
            raise DeadLetterError("its fields are not all strings")
        return fields

    @property
    def request_id(self) -> str:
        try:
            return self.original().get("request_id", "")
        except DeadLetterError:
            return ""


def _letter(stream: str, entry_id: str, fields: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        stream=stream,
        id=entry_id,
        source=fields.get("stream", DEAD_LETTER_STREAMS.get(stream, "")),
        source_id=fields.get("entry_id", ""),
        reason=fields.get("reason", ""),
        raw_fields=fields.get("fields", ""),
    )


def check_stream(stream: str) -> str:
    if stream not in DEAD_LETTER_STREAMS:
        raise DeadLetterError(f"{stream!r} is not a dead-letter stream")
    return stream


async def count(redis: aioredis.Redis, stream: str) -> int:
    return int(await redis.xlen(check_stream(stream)))


async def newest(
    redis: aioredis.Redis, stream: str, *, limit: int, before: str | None = None
) -> tuple[list[DeadLetter], str | None]:
    """A page of dead letters, newest first, and the id to continue from when there are more."""
    entries = await streams.newest(redis, check_stream(stream), count=limit + 1, before=before)
    page = [_letter(stream, entry_id, fields) for entry_id, fields in entries[:limit]]
    return page, (page[-1].id if len(entries) > limit else None)


async def show(redis: aioredis.Redis, stream: str, entry_id: str) -> DeadLetter | None:
    found = await streams.one(redis, check_stream(stream), entry_id)
    return _letter(stream, *found) if found else None


async def replay(redis: aioredis.Redis, letter: DeadLetter) -> str | None:
    """Append the original entry to its source stream and delete the dead letter; None when already gone."""
    target = DEAD_LETTER_STREAMS[check_stream(letter.stream)]
    if letter.source and letter.source != target:
        raise DeadLetterError(f"it came from {letter.source!r}, not {target!r}")
    flat = [item for pair in letter.original().items() for item in pair]
    new_id: Any = await redis.eval(_REPLAY, 2, letter.stream, target, letter.id, *flat)
    return None if new_id is None else str(new_id)


async def purge(redis: aioredis.Redis, stream: str, entry_id: str) -> bool:
    """Delete one dead letter; False when it was already gone."""
    return int(await redis.xdel(check_stream(stream), entry_id)) == 1
