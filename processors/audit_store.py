"""The audit agent's recorder: windowed aggregates in Redis, per UTC day, per product and overall, once per bid.

Layout (`schema.audit`; one UTC day `D`, the day of the bid's `calculated_at`, so a late or redelivered
event lands in the day it belongs to): `audit:seen:{D}` is the set of bid ids already counted for that day;
`audit:agg:{D}` and `audit:agg:{D}:products` hold the counters.

One Lua script marks the bid seen (SADD), bumps the counters and, for a flagged bid, appends the flag to
`audit:flags`: all or nothing, so neither a redelivery nor a second agent process handling the same entry
concurrently can count a bid twice or emit its flag twice, and a crash can never leave a bid counted but
unflagged.

Money is summed in integer cents (HINCRBY): every stored amount has two decimals, so the totals are exact,
which HINCRBYFLOAT would not guarantee.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from redis import asyncio as aioredis

from schema.audit import WINDOW_DAYS
from schema.keys import AUDIT_FLAGS, audit_day_key, audit_products_key, audit_seen_key

# Events for days older than this count nowhere: they are outside every window `audit_stats` serves.
MAX_EVENT_AGE_DAYS = WINDOW_DAYS + 1
# Outlives MAX_EVENT_AGE_DAYS from the last write to a day, so any redelivery of a counted bid either still
# finds its "seen" marker or is old enough to be ignored: a bid can never be counted twice.
DAY_TTL_S = (MAX_EVENT_AGE_DAYS + 2) * 86_400

_RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local ttl = tonumber(ARGV[5])
local product = ARGV[2]
local flagged = ARGV[3] == '1'
local cents = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HINCRBY', KEYS[2], 'reviewed', 1)
redis.call('HINCRBY', KEYS[2], 'deviation_cents', cents)
redis.call('HINCRBY', KEYS[3], product .. ':r', 1)
redis.call('HINCRBY', KEYS[3], product .. ':d', cents)
if flagged then
  redis.call('HINCRBY', KEYS[2], 'flagged', 1)
  redis.call('HINCRBY', KEYS[2], 'flagged_deviation_cents', cents)
  redis.call('HINCRBY', KEYS[3], product .. ':f', 1)
  local flag = {}
  for i = 7, #ARGV do
    flag[#flag + 1] = ARGV[i]
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', unpack(flag))
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return 1
"""


@dataclass(frozen=True, slots=True)
class Observation:
    """One reviewed bid, ready to be recorded."""

    bid_id: int
    product_id: int
    day: date
    flagged: bool
    deviation_cents: int  # |adjusted - current| in cents
    flag_fields: Mapping[str, str] = field(default_factory=dict)  # the audit:flags entry, when flagged


class AuditStore:
    """Records observations atomically; one instance per Redis client (it holds the registered script)."""

    def __init__(self, redis: aioredis.Redis, *, flags_maxlen: int) -> None:
        self.redis = redis
        self.flags_maxlen = flags_maxlen
        self._record = redis.register_script(_RECORD)

    async def record(self, observations: Iterable[Observation]) -> list[bool]:
        """Record each observation once; True for those seen for the first time (counted, flag emitted)."""
        pending = list(observations)
        if not pending:
            return []
        # One round trip for the batch; each script call is still atomic on its own.
        async with self.redis.pipeline(transaction=False) as pipe:
            for obs in pending:
                flag_args = [item for pair in obs.flag_fields.items() for item in pair]
                await self._record(
                    keys=[audit_seen_key(obs.day), audit_day_key(obs.day), audit_products_key(obs.day), AUDIT_FLAGS],
                    args=[
                        obs.bid_id,
                        obs.product_id,
                        "1" if obs.flagged else "0",
                        obs.deviation_cents,
                        DAY_TTL_S,
                        self.flags_maxlen,
                        *flag_args,
                    ],
                    client=pipe,
                )
            results: list[Any] = await pipe.execute()
        return [int(result) == 1 for result in results]
