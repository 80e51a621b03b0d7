"""A late reply to a gateway that died: the reply stream it re-creates expires like the gateway's own did."""

from __future__ import annotations

import uuid

import asyncpg
import redis.asyncio as aioredis

from processors.pricing import PricingHandler
from redis_streams.groups import GroupReader
from schema import keys
from schema.events import BidRequested
from tests.support import group_config_for_tests


async def test_a_reply_stream_recreated_by_a_late_reply_expires(redis: aioredis.Redis, db: asyncpg.Pool) -> None:
    dead_gateway = keys.reply_stream("gone")  # expired with its gateway: no key at all
    request = BidRequested(str(uuid.uuid4()), dead_gateway, "r1", 7, 1.5, 150.0)
    await redis.xadd(keys.BID_REQUESTS, request.to_fields())  # type: ignore[arg-type]
    reader = GroupReader(redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "a"))
    await reader.ensure_group()

    await PricingHandler(db, redis, reply_stream_maxlen=1000, reply_stream_ttl_s=300)(await reader.read())

    assert await redis.xlen(dead_gateway) == 1
    assert 0 < await redis.ttl(dead_gateway) <= 300
