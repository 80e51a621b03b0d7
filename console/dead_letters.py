"""Dead letters as the console shows them, and its replay and purge (through `redis_streams.dead_letters`).

An entry holds `entry_id` (its id in the source stream), `stream` (the source), `reason`, and `fields` (the
original entry as JSON: `schema.events.DeadLetter`). The console lists entries as they are, even ones that do
not decode (shown as text, with why they cannot be replayed). Replay and purge are the bottom package's: a
replay appends the original fields to the source stream and deletes the dead letter in one script, so a second
replay of the same entry (a double click, two operators) finds it gone and appends nothing; and it is safe
even when the bid was stored meanwhile, since the pricing agent stores a request id once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis import asyncio as aioredis

from console import streams
from redis_streams import dead_letters as shared
from schema.keys import DEAD_LETTER_STREAMS

__all__ = ["DEAD_LETTER_STREAMS", "DeadLetter", "DeadLetterError", "count", "newest", "purge", "replay", "show"]


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
    if letter.source != target:
        raise DeadLetterError(f"it names {letter.source!r} as its stream, not {target!r}")
    letter.original()  # refuses what cannot be replayed, with the reason
    result = await shared.replay(redis, letter.stream, [letter.id])
    if letter.id in result.failed:
        raise DeadLetterError(result.failed[letter.id])
    return result.replayed.get(letter.id)


async def purge(redis: aioredis.Redis, stream: str, entry_id: str) -> bool:
    """Delete one dead letter; False when it was already gone."""
    return await shared.purge(redis, check_stream(stream), [entry_id]) == 1
