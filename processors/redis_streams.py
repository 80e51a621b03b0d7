"""Redis Streams consumer groups as the transport of Faust agents.

faust-streaming only ships Kafka transports, so this module connects a Faust agent to a Redis consumer group
without one. A `GroupSource` (a `mode.Service` started by the Faust worker) reads the group in batches and
sends each batch into a bounded in-memory Faust channel; the agent registered by `group_agent` takes batches
from that channel, awaits the handler, and only then acknowledges the entries.

Guarantees, for every entry of the stream:

* At-least-once delivery. An entry is `XACK`ed only after its batch's handler returned; if the handler raises,
  or the process dies, the entries stay in the group's pending list.
* Recovery. On start a consumer first re-reads its own pending entries (a restart under the same consumer
  name), then reads new ones. Every `claim_interval_s` it takes over, with `XAUTOCLAIM`, entries that another
  consumer has held for longer than `claim_idle_ms` (a consumer that died or hangs), so a dead process never
  strands work. Several processes in one group share the stream.
* Bounded memory. The channel holds at most `read_ahead` batches: when the handler is slower than the stream,
  the reader waits instead of buffering.
* Order. With `concurrency` 1, entries reach the handler in stream order within one consumer; with more,
  several batches are handled at once (one commit overlaps the next batch's work); across consumers, and
  for reclaimed entries, there is no global order. Handlers must therefore be idempotent (the pricing agent relies on a
  unique request id in PostgreSQL, the audit agent on a per-bid "seen" marker).

A handler that fails is retried after `retry_delay_s` with the same batch (a database that is briefly away
does not lose or reorder work); entries that can never succeed must be handled by the handler itself
(dead-lettered and acknowledged), since a poisoned entry would otherwise be retried forever.

Liveness. With `heartbeat_file` set, the source touches that file (at most once a second) each time its read
loop completes an iteration: a read returned (empty or not) and its batch, if any, was accepted by the channel.
`bidengine probe <role>` fails when the file is older than its `--max-age-s`. Since the channel is bounded, a
handler stuck forever stops the loop, hence the heartbeat, and the pod is restarted. A Redis outage stops it too
(reads fail): the probe's failure threshold (times its period, plus the max age) must exceed the outage to be
tolerated without restarting every agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import mode
from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from schema.redis_pipe import execute_packed, read_entries

log = logging.getLogger(__name__)


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

    def ack_command(self) -> tuple[str, ...]:
        return ("XACK", self.stream, self.group, *(entry.id for entry in self))

    def mark_acknowledged(self) -> None:
        self.acknowledged = True


BatchHandler = Callable[[Batch], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    stream: str
    group: str
    consumer: str
    batch_size: int = 500
    block_ms: int = 100
    claim_idle_ms: int = 15_000
    claim_interval_s: float = 5.0
    read_ahead: int = 1
    concurrency: int = 1
    retry_delay_s: float = 1.0
    # Touched by the source while it reads and hands batches on (see "Liveness" above); None: no heartbeat.
    heartbeat_file: str | None = None


def default_consumer_name(prefix: str) -> str:
    """A name unique to this process: a restarted pod gets a new name, and `XAUTOCLAIM` recovers the old one's work."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}"


def _entries(raw: Sequence[tuple[str, dict[str, str] | None]]) -> list[StreamEntry]:
    # An entry trimmed away while pending comes back with no fields; there is nothing left to process.
    return [StreamEntry(entry_id, fields) for entry_id, fields in raw if fields is not None]


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

    async def ensure_group(self) -> None:
        await ensure_group(self.redis, self.config.stream, self.config.group)

    async def read(self) -> Batch:
        """The next batch: this consumer's own pending entries first (after a restart), then new entries."""
        if self._own_pending_cursor is not None:
            raw = await self._read_group(self._own_pending_cursor, block_ms=None)
            if raw:
                # Advance the cursor: reading id 0 again would return the same entries forever.
                self._own_pending_cursor = raw[-1][0]
                return self._track(_entries(raw))
            self._own_pending_cursor = None
        return self._track(_entries(await self._read_group(">", block_ms=self.config.block_ms)))

    async def _read_group(self, start: str, *, block_ms: int | None) -> list[tuple[str, dict[str, str] | None]]:
        # Sent through execute_packed: redis-py's XREADGROUP reply parsing cost more than the rest of a bid.
        cfg = self.config
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        command = ("XREADGROUP", "GROUP", cfg.group, cfg.consumer, "COUNT", cfg.batch_size, *block)
        (reply,) = await execute_packed(
            self.redis, [(*command, "STREAMS", cfg.stream, start)], timeout_s=(block_ms or 0) / 1000 + 10
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

    def forget(self, entries: Batch) -> None:
        """The entries were acknowledged elsewhere (inside the handler's own transaction)."""
        self._in_flight.difference_update(entry.id for entry in entries)

    def _track(self, entries: list[StreamEntry]) -> Batch:
        self._in_flight.update(entry.id for entry in entries)
        return Batch(entries, self.config.stream, self.config.group)


class GroupSource(mode.Service):
    """Feeds a Faust channel with batches read from a Redis consumer group (see the module docstring)."""

    def __init__(self, reader: GroupReader, channel: faust.ChannelT[Any], **kwargs: Any) -> None:
        self.reader = reader
        self.channel = channel
        self._heartbeat_file = reader.config.heartbeat_file
        self._last_beat = float("-inf")
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.reader.ensure_group()
        log.info(
            "consuming %s as %s/%s", self.reader.config.stream, self.reader.config.group, self.reader.config.consumer
        )

    @mode.Service.task
    async def _read_loop(self) -> None:
        while not self.should_stop:
            try:
                batch = await self.reader.read()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group vanished (a Redis restart without persistence, a flush): recreate it.
                log.warning(
                    "group %s on %s is gone; recreating it", self.reader.config.group, self.reader.config.stream
                )
                await self.reader.ensure_group()
                continue
            except (RedisError, OSError, TimeoutError) as exc:  # a packed read times out with TimeoutError
                log.warning("reading %s failed, retrying: %s", self.reader.config.stream, exc)
                await self.sleep(self.reader.config.retry_delay_s)
                continue
            if batch:
                await self.channel.send(value=batch)
            if self._heartbeat_file is not None:
                self._beat(self._heartbeat_file)

    def _beat(self, path: str) -> None:
        """Touch the heartbeat file, at most once a second (a read loop may turn hundreds of times a second)."""
        now = time.monotonic()
        if now - self._last_beat < 1.0:
            return
        self._last_beat = now
        try:
            Path(path).touch()
        except OSError as exc:  # a full or read-only /tmp: the probe will report it, the agent keeps working
            log.warning("cannot touch heartbeat file %s: %s", path, exc)

    @mode.Service.task
    async def _reclaim_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(self.reader.config.claim_interval_s)
            try:
                claimed = await self.reader.reclaim()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("reclaiming on %s failed: %s", self.reader.config.stream, exc)
                continue
            if claimed:
                log.warning(
                    "reclaimed %d entries of %s from stalled consumers", len(claimed), self.reader.config.stream
                )
                await self.channel.send(value=claimed)


async def handle_until_done(reader: GroupReader, handler: BatchHandler, batch: Batch) -> None:
    """Run the handler, retrying while it fails, then acknowledge: nothing is acked before it is handled."""
    while True:
        try:
            await handler(batch)
            break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed on %d entries of %s; retrying", len(batch), reader.config.stream)
            await asyncio.sleep(reader.config.retry_delay_s)
    if batch.acknowledged:
        reader.forget(batch)
        return
    while True:
        try:
            await reader.ack(batch)
            return
        except (RedisError, OSError, TimeoutError) as exc:
            # Unacked entries would be redelivered and handled again (harmless: handlers are idempotent),
            # but retrying the ack avoids that work.
            log.warning("acknowledging on %s failed, retrying: %s", reader.config.stream, exc)
            await asyncio.sleep(reader.config.retry_delay_s)


def group_agent(
    app: faust.App, redis: aioredis.Redis, config: GroupConfig, handler: BatchHandler, *, name: str
) -> GroupSource:
    """Register a Faust agent that handles batches of `config.stream` read through `config.group`.

    Returns the source service (already registered with the app, started by the worker).
    """
    channel: faust.ChannelT[Any] = app.channel(maxsize=config.read_ahead)
    reader = GroupReader(redis, config)

    async def agent(batches: faust.StreamT[Batch]) -> None:
        async for batch in batches:
            await handle_until_done(reader, handler, batch)

    agent.__name__ = agent.__qualname__ = name
    app.agent(channel, name=name, concurrency=config.concurrency)(agent)
    source = GroupSource(reader, channel)
    app.service(source)  # type: ignore[arg-type]  # Faust accepts instances; its annotation says class.
    return source


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def trim_processed(redis: aioredis.Redis, stream: str, *, keep_ms: int, now_ms: int) -> str:
    """Trim entries older than `keep_ms` that every consumer group has processed; return the MINID used.

    `XADD MAXLEN` would drop entries whether or not they were acknowledged, so streams are bounded here
    instead: nothing still pending, or not yet delivered, to any group is ever trimmed. A stalled group
    therefore makes its stream grow (watch `stream_lag`) rather than lose entries.
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
