"""Consumer groups: reading in batches, reclaiming stalled entries, acknowledging, trimming and lag.

Guarantees a `GroupReader` gives its caller (the Faust bridge in `processors.bridge` builds on them):

* Recovery. A reader first re-reads its own pending entries (a restart under the same consumer name), then
  reads new ones; `reclaim()` takes over, with `XAUTOCLAIM`, entries another consumer has held for longer than
  `claim_idle_ms` (a consumer that died or hangs), never the reader's own entries still in flight.
* Nothing is acknowledged here unless the caller says so: entries stay pending until `ack()` (or the caller's
  own MULTI/EXEC carrying `Batch.ack_command()`).
* `trim_processed` never removes an entry a group has not processed.
* Delivery counts come from the group's pending list (`delivery_counts`, XPENDING's extended form): they count
  every delivery (XREADGROUP, XAUTOCLAIM) and survive restarts of the consumers, so a retry cap built on them
  holds across processes. `bury` dead-letters an entry and acknowledges it in one MULTI/EXEC.
* Consumers that left (a restarted pod gets a new name) are removed once they hold nothing and have been idle
  for `consumer_expiry_ms` (`expire_idle_consumers`), so the group's consumer list stays bounded.
* Presence: a reader announces itself (`announce`, at most once a second) in the group's presence key, a sorted
  set of consumer names scored by the time of their last successful read, on Redis's clock (`TIME`, so hosts'
  clocks do not matter). `live_consumers` counts the recent ones: the gateway's "is a pricing agent alive".
  Not XINFO CONSUMERS: before Redis 7.2 a consumer's `idle` is reset only by reads that return entries, so an
  agent blocked on a quiet stream looks dead there (measured on 6.2 and 7.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from redis_streams.pipe import execute_packed, read_entries, xadd
from redis_streams.retry import Backoff
from schema.events import DeadLetter


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry as read from Redis: its id and its fields."""

    id: str
    fields: dict[str, str]


class Batch(list[StreamEntry]):
    """Entries read together from one consumer group.

    The bridge acknowledges a batch after its handler returns. A handler that writes to Redis may instead
    put `ack_command()` in its own MULTI/EXEC, so its output and the acknowledgement happen atomically (no
    duplicate output if the process dies in between), and then call `mark_acknowledged()`.
    """

    def __init__(self, entries: Iterable[StreamEntry], stream: str, group: str) -> None:
        super().__init__(entries)
        self.stream = stream
        self.group = group
        self.acknowledged = False
        # Re-read from this consumer's own pending list (delivered to it before a restart), not new entries.
        self.redelivered = False

    def ack_command(self) -> tuple[str, ...]:
        return ("XACK", self.stream, self.group, *(entry.id for entry in self))

    def mark_acknowledged(self) -> None:
        self.acknowledged = True


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """How one consumer reads one group. Built from `Settings` by the worker that wires the agent."""

    stream: str
    group: str
    consumer: str
    batch_size: int  # entries per XREADGROUP / XAUTOCLAIM
    block_ms: int  # how long a read waits for new entries
    claim_idle_ms: int  # another consumer's entry is taken over after this long without an acknowledgement
    claim_interval_s: float  # how often to look for such entries
    read_ahead: int  # batches read but not yet handled (the bridge's bounded channel)
    concurrency: int  # batches handled at once
    backoff: Backoff  # pauses between attempts while a backend is away (or a loop keeps failing)
    max_deliveries: int  # an entry that fails on its own is dead-lettered at this delivery
    dead_letter_stream: str  # where it goes
    dead_letter_maxlen: int  # approximate cap of that stream
    consumer_expiry_ms: int  # a consumer holding nothing, idle this long, is removed from the group
    presence_key: str | None  # where the reader announces itself while it reads (None: it does not)
    # Touched while the bridge reads and hands batches on (see `processors.bridge`); None: no heartbeat.
    heartbeat_file: str | None
    # After a read that did not fill a batch, the next read starts at least this long after it started (0: at
    # once). A consumer whose latency does not matter (the audit agent) then takes its live stream in fewer,
    # larger batches: what a batch costs (a read, the channel hop, a script call) is shared by more entries.
    min_read_interval_ms: int = 0


def default_consumer_name(prefix: str) -> str:
    """A name unique to this process: a restarted pod gets a new name, and `XAUTOCLAIM` recovers the old one's work."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}"


def _entries(raw: Sequence[tuple[str, dict[str, str] | None]]) -> list[StreamEntry]:
    # An entry trimmed away while pending comes back with no fields; there is nothing left to process.
    return [StreamEntry(entry_id, fields) for entry_id, fields in raw if fields is not None]


# KEYS[1] the stream; ARGV[1] the group, ARGV[2] idle threshold (ms), ARGV[3] the caller (never removed).
# In one script, so a consumer cannot take entries between the check (nothing pending) and its removal
# (XGROUP DELCONSUMER drops the pending entries of the consumer it removes).
_EXPIRE_CONSUMERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then
  return {}
end
local removed = {}
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""


# KEYS[1] the presence key; ARGV[1] the consumer, ARGV[2] how long a silent member is kept (ms).
_ANNOUNCE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now_ms
"""

# KEYS[1] the presence key; ARGV[1] how recent an announcement counts (ms).
LIVE_CONSUMERS_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now_ms - tonumber(ARGV[1]), '+inf')
"""

ANNOUNCE_INTERVAL_S = 1.0


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create the group (and the stream) if needed, starting from the stream's beginning so nothing is skipped."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class GroupReader:
    """The Redis side of a consumer group member: read, reclaim and acknowledge batches."""

    def __init__(self, redis: aioredis.Redis, config: GroupConfig) -> None:
        self.redis = redis
        self.config = config
        self._own_pending_cursor: str | None = "0"
        self._claim_cursor = "0-0"
        # Entries this consumer holds until they are acked. XAUTOCLAIM does not spare the caller's own
        # entries, so a slow batch of ours would otherwise be "reclaimed" by ourselves and handled twice.
        self._in_flight: set[str] = set()
        self._last_announce = float("-inf")
        self._next_read_at = 0.0  # monotonic time before which a new read waits (min_read_interval_ms)
        self._announce = redis.register_script(_ANNOUNCE)
        self._expire_consumers = redis.register_script(_EXPIRE_CONSUMERS)

    async def ensure_group(self) -> None:
        await ensure_group(self.redis, self.config.stream, self.config.group)

    async def read(self) -> Batch:
        """The next batch: this consumer's own pending entries first (after a restart), then new entries."""
        if self._own_pending_cursor is not None:
            raw = await self._read_group(self._own_pending_cursor, block_ms=None)
            if raw:
                # Advance the cursor: reading id 0 again would return the same entries forever.
                self._own_pending_cursor = raw[-1][0]
                batch = self._track(_entries(raw))
                batch.redelivered = True
                return batch
            self._own_pending_cursor = None
        cfg = self.config
        if cfg.min_read_interval_ms:
            wait_s = self._next_read_at - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            started = time.monotonic()
        raw = await self._read_group(">", block_ms=cfg.block_ms)
        if cfg.min_read_interval_ms:
            # A full batch: more is waiting, read it at once. Otherwise let the stream fill the next one.
            self._next_read_at = 0.0 if len(raw) >= cfg.batch_size else started + cfg.min_read_interval_ms / 1000
        return self._track(_entries(raw))

    async def _read_group(self, start: str, *, block_ms: int | None) -> list[tuple[str, dict[str, str] | None]]:
        # Sent through execute_packed: redis-py's XREADGROUP reply parsing cost more than the rest of a bid.
        cfg = self.config
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        command = ("XREADGROUP", "GROUP", cfg.group, cfg.consumer, "COUNT", cfg.batch_size, *block)
        # Idempotent enough to retry once on a dead connection: entries whose reply was lost stay pending for
        # this consumer, and `reclaim` hands them back after `claim_idle_ms`.
        (reply,) = await execute_packed(
            self.redis,
            [(*command, "STREAMS", cfg.stream, start)],
            timeout_s=(block_ms or 0) / 1000 + 10,
            idempotent=True,
        )
        if isinstance(reply, Exception):
            raise reply
        return read_entries(reply)

    async def reclaim(self) -> Batch:
        """Take over entries other consumers have held too long (XAUTOCLAIM), one batch per call."""
        cfg = self.config
        result: Any = await self.redis.xautoclaim(
            cfg.stream,
            cfg.group,
            cfg.consumer,
            min_idle_time=cfg.claim_idle_ms,
            start_id=self._claim_cursor,
            count=cfg.batch_size,
        )
        next_cursor, claimed = result[0], result[1]
        self._claim_cursor = next_cursor
        return self._track([entry for entry in _entries(claimed) if entry.id not in self._in_flight])

    async def ack(self, entries: Sequence[StreamEntry]) -> None:
        if entries:
            await self.redis.xack(self.config.stream, self.config.group, *(entry.id for entry in entries))
            self._in_flight.difference_update(entry.id for entry in entries)

    def forget(self, entries: Sequence[StreamEntry]) -> None:
        """The entries were acknowledged elsewhere (inside the handler's own transaction), or are left pending
        on purpose: `reclaim` (ours or another consumer's) delivers them again after `claim_idle_ms`."""
        self._in_flight.difference_update(entry.id for entry in entries)

    async def delivery_counts(self, entries: Sequence[StreamEntry]) -> dict[str, int]:
        """How often each entry has been delivered to the group (absent: no longer pending)."""
        counts: dict[str, int] = {}
        for entry in entries:
            try:
                pending: Any = await self.redis.xpending_range(
                    self.config.stream, self.config.group, min=entry.id, max=entry.id, count=1
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return {}  # the group is gone (Redis restarted empty): nothing of it is pending any more
            if pending:
                counts[entry.id] = int(pending[0]["times_delivered"])
        return counts

    async def bury(self, entry: StreamEntry, *, reason: str, deliveries: int) -> None:
        """Dead-letter `entry` and acknowledge it, atomically: it is either still pending or in the dead letters.

        Not retried on a connection error: if the transaction did not run, the entry is still pending and is
        delivered (and buried) again; if it did, it is acknowledged and never comes back. Once either way.
        """
        cfg = self.config
        letter = DeadLetter(entry.id, cfg.stream, reason, entry.fields, group=cfg.group, deliveries=deliveries)
        await execute_packed(
            self.redis,
            [
                xadd(cfg.dead_letter_stream, letter.to_fields(), maxlen=cfg.dead_letter_maxlen),
                ("XACK", cfg.stream, cfg.group, entry.id),
            ],
            transaction=True,
        )
        self._in_flight.discard(entry.id)

    async def announce(self) -> None:
        """Say "this consumer reads" in the presence key, at most once per `ANNOUNCE_INTERVAL_S`."""
        cfg = self.config
        now = time.monotonic()
        if cfg.presence_key is None or now - self._last_announce < ANNOUNCE_INTERVAL_S:
            return
        await self._announce(keys=[cfg.presence_key], args=[cfg.consumer, cfg.consumer_expiry_ms])
        self._last_announce = now

    async def expire_idle_consumers(self) -> list[str]:
        """Remove the group's members that hold nothing and have been idle for `consumer_expiry_ms`."""
        cfg = self.config
        removed: Any = await self._expire_consumers(
            keys=[cfg.stream], args=[cfg.group, cfg.consumer_expiry_ms, cfg.consumer]
        )
        return [str(name) for name in removed]

    def _track(self, entries: list[StreamEntry]) -> Batch:
        self._in_flight.update(entry.id for entry in entries)
        return Batch(entries, self.config.stream, self.config.group)


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def trim_processed(redis: aioredis.Redis, stream: str, *, keep_ms: int, now_ms: int) -> str:
    """Trim entries older than `keep_ms` that every consumer group has processed; return the MINID used.

    `XADD MAXLEN` would drop entries whether or not they were acknowledged, so streams are bounded here
    instead: nothing still pending, or not yet delivered, to any group is ever trimmed. A stalled group
    therefore makes its stream grow (the gateway's `/ready` shows `pricing_lag`) rather than lose entries.
    """
    floor = (max(now_ms - keep_ms, 0), 0)
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return "0-0"
    for info in groups:
        safe = _parse_id(str(info["last-delivered-id"]))
        if int(info["pending"]):
            summary: Any = await redis.xpending(stream, info["name"])
            safe = min(safe, _parse_id(str(summary["min"])))
        floor = min(floor, safe)
    min_id = f"{floor[0]}-{floor[1]}"
    await redis.xtrim(stream, minid=min_id, approximate=True)
    return min_id


async def live_consumers(redis: aioredis.Redis, presence_key: str, *, alive_ms: int) -> int:
    """Consumers that announced themselves in `presence_key` within the last `alive_ms` (Redis's clock)."""
    script = redis.register_script(LIVE_CONSUMERS_SCRIPT)
    return int(await script(keys=[presence_key], args=[alive_ms]))


async def group_lag(redis: aioredis.Redis, stream: str, group: str) -> int | None:
    """Entries of `stream` the group has not finished: not yet delivered (Redis 7 `lag`) plus pending.

    None when the stream or the group does not exist yet. Redis 6.2 reports no `lag`: pending only.
    """
    with contextlib.suppress(ResponseError):
        for info in await redis.xinfo_groups(stream):
            if info["name"] == group:
                lag = info.get("lag")
                return int(info["pending"]) + (int(lag) if lag is not None else 0)
    return None
