"""Writing a poll's records to Redis, and reading the latest ones back.

A poll goes out in one MULTI/EXEC pipeline: one round trip, and a reader never sees half a poll. The list
keeps the newest records first and is trimmed in the same transaction; the stream gets one entry per record,
in order, capped approximately (`MAXLEN ~`, which lets Redis trim whole nodes cheaply).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from schema.competitor import STREAM_RECORD_FIELD, CompetitorPrice
from schema.keys import COMPETITOR_PRICES_LIST, COMPETITOR_PRICES_STREAM

log = logging.getLogger(__name__)


async def publish(
    redis: aioredis.Redis,
    records: Sequence[CompetitorPrice],
    *,
    list_max: int,
    stream_maxlen: int,
) -> None:
    if not records:
        return  # LPUSH needs at least one value, and an empty poll has nothing to say
    payloads = [record.to_json() for record in records]
    async with redis.pipeline(transaction=True) as pipe:
        # LPUSH puts its last argument at the head; pushing the poll reversed leaves it in source order
        # at the head of the list, ahead of every older poll.
        pipe.lpush(COMPETITOR_PRICES_LIST, *reversed(payloads))
        pipe.ltrim(COMPETITOR_PRICES_LIST, 0, list_max - 1)
        for payload in payloads:
            pipe.xadd(
                COMPETITOR_PRICES_STREAM,
                {STREAM_RECORD_FIELD: payload},
                maxlen=stream_maxlen,
                approximate=True,
            )
        await pipe.execute()


async def latest(redis: aioredis.Redis, limit: int) -> list[dict[str, Any]]:
    """The `limit` newest records, newest first, exactly as list consumers read them.

    Elements that are not JSON objects (written by something other than the monitor) are skipped and
    logged, so one foreign value cannot take `/prices` down.
    """
    payloads: list[str | bytes] = await redis.lrange(COMPETITOR_PRICES_LIST, 0, limit - 1)
    records = []
    for payload in payloads:
        try:
            record = json.loads(payload)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("skipping a %s element that is not a JSON object: %.80r", COMPETITOR_PRICES_LIST, payload)
    return records
