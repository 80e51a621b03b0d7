"""Redis Streams consumer groups as the transport of Faust agents (the reading itself: `redis_streams.groups`).

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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import mode
from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from redis_streams.groups import Batch, GroupConfig, GroupReader

log = logging.getLogger(__name__)

BatchHandler = Callable[[Batch], Awaitable[None]]


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
