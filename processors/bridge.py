"""Redis Streams consumer groups as the transport of Faust agents (the reading itself: `redis_streams.groups`).

faust-streaming only ships Kafka transports, so this module connects a Faust agent to a Redis consumer group
without one. A `GroupSource` (a `mode.Service` started by the Faust worker) reads the group in batches and
sends each batch into a bounded in-memory Faust channel; the agent registered by `group_agent` takes batches
from that channel, awaits the handler, and only then acknowledges the entries.

Guarantees, for every entry of the stream:

* At-least-once delivery. An entry is `XACK`ed only after its batch's handler returned (or once it is
  dead-lettered, below); if the handler raises, or the process dies, the entries stay in the group's pending
  list.
* Recovery. On start a consumer first re-reads its own pending entries (a restart under the same consumer
  name), then reads new ones. Every `claim_interval_s` it takes over, with `XAUTOCLAIM`, entries that another
  consumer has held for longer than `claim_idle_ms` (a consumer that died or hangs), so a dead process never
  strands work. Several processes in one group share the stream.
* Bounded memory. The channel holds at most `read_ahead` batches: when the handler is slower than the stream,
  the reader waits instead of buffering.
* Order. With `concurrency` 1, entries reach the handler in stream order within one consumer; with more,
  several batches are handled at once (one commit overlaps the next batch's work); across consumers, and
  for reclaimed or retried entries, there is no global order. Handlers must therefore be idempotent (the
  pricing agent relies on a unique request id in PostgreSQL, the audit agent on a per-bid "seen" marker).

Outages (Redis or PostgreSQL away, for any length of time, at start-up or later). Nothing here exits or lets
an exception escape a service task (which would crash the whole Faust worker). Creating the group, reading,
handling, acknowledging and reclaiming each retry with exponential back-off (`redis_streams.retry`), log the
outage once and the recovery once, and report their state to the heartbeat (readiness). A failure the backends
cause (`processors.transient`) never counts against the entries: the batch is retried as it is, for as long
as the outage lasts. A consumer whose own backends are away does not reclaim other consumers' entries.

Poisoned entries. A batch whose handler fails otherwise (an unexpected exception: a bug, or an entry the
handler cannot cope with) is split in two and each half handled on its own, recursively, which isolates the
failing entries in about 2·log2(batch) handler calls while the others are handled and acknowledged. A failing
entry is left pending: it is delivered again (to this consumer or another) by `XAUTOCLAIM` after
`claim_idle_ms`, while the rest of the stream flows past it. When it fails at its `max_deliveries`-th delivery
(the count kept by Redis in the group's pending list, so it holds across processes and restarts), it is
dead-lettered (`config.dead_letter_stream`, with the reason and the count) and acknowledged in one MULTI/EXEC.

Liveness and readiness: `processors.heartbeat`. The read loop beats after each read, every retry loop after
each failed attempt; a handler stuck forever stops the loop (the channel is bounded) and the beats. After its
reads the loop also announces the consumer in `consumers:<group>` (at most once a second): how the gateway
knows a pricing agent is alive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from processors.heartbeat import Heartbeat
from processors.metrics import StreamConsumerMetrics
from processors.transient import is_transient as default_is_transient
from redis_streams.groups import Batch, GroupConfig, GroupReader, StreamEntry
from redis_streams.retry import Outage, TransientCheck, describe, retry
from telemetry.logs import REQUEST_ID

log = logging.getLogger(__name__)

BatchHandler = Callable[[Batch], Awaitable[None]]
MAX_REASON_CHARS = 1000


def _is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class GroupSource(mode.Service):
    """Feeds a Faust channel with batches read from a Redis consumer group (see the module docstring)."""

    def __init__(
        self,
        reader: GroupReader,
        channel: faust.ChannelT[Any],
        *,
        heartbeat: Heartbeat,
        is_transient: TransientCheck = default_is_transient,
        metrics: StreamConsumerMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        self.reader = reader
        self.channel = channel
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.is_transient = is_transient
        cfg = reader.config
        self._read_outage = Outage(
            f"reading {cfg.stream} (group {cfg.group})",
            logger=log,
            on_change=lambda problem: heartbeat.report(f"{cfg.group} reader", problem),
        )
        self._reclaim_outage = Outage(
            f"reclaiming stalled entries of {cfg.stream}",
            logger=log,
            on_change=lambda problem: heartbeat.report(f"{cfg.group} reclaim", problem, readiness=False),
        )
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        # No Redis here: the read loop creates the group, retrying while Redis is away, so an agent started
        # during an outage runs (alive, not ready) and starts consuming once Redis answers.
        cfg = self.reader.config
        log.info("consuming %s as %s/%s", cfg.stream, cfg.group, cfg.consumer)

    @mode.Service.task
    async def _read_loop(self) -> None:
        cfg = self.reader.config
        group_exists = False
        just_recreated = False
        while not self.should_stop:
            try:
                if not group_exists:
                    await self.reader.ensure_group()
                    group_exists = True
                batch = await self.reader.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_nogroup(exc) and not just_recreated:
                    # The stream or group vanished (Redis restarted without persistence, a flush): recreate it.
                    log.warning("group %s on %s is gone; recreating it", cfg.group, cfg.stream)
                    group_exists, just_recreated = False, True
                    continue
                self._read_outage.failed(exc, transient=self.is_transient(exc))
                self.heartbeat.beat()
                await self.sleep(cfg.backoff.delay(self._read_outage.failures))
                continue
            just_recreated = False
            self._read_outage.recovered()
            if batch:
                if batch.redelivered and self.metrics is not None:
                    self.metrics.redelivered_entries.inc(len(batch))
                # Nothing may fail between the read and this: a batch read is tracked as ours until handled.
                await self.channel.send(value=batch)
            self.heartbeat.beat()
            await self._announce()

    async def _announce(self) -> None:
        try:
            await self.reader.announce()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis just went away: the next read meets the outage and reports it
            log.debug("announcing %s failed: %s", self.reader.config.consumer, describe(exc))

    @mode.Service.task
    async def _reclaim_loop(self) -> None:
        cfg = self.reader.config
        # Departed consumers are looked for a few times per expiry period (they are harmless meanwhile).
        expiry_every_s = max(cfg.consumer_expiry_ms / 1000 / 10, cfg.claim_interval_s)
        next_expiry = time.monotonic() + expiry_every_s
        while True:
            await self.sleep(cfg.claim_interval_s)
            if self.should_stop:
                break
            if not self.heartbeat.ready:
                # Our own backends are away: taking other consumers' entries would only stall them here.
                continue
            try:
                claimed = await self.reader.reclaim()
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + expiry_every_s
                    removed = await self.reader.expire_idle_consumers()
                    if removed:
                        log.info("removed %d departed consumers from %s: %s", len(removed), cfg.group, removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._reclaim_outage.failed(exc, transient=self.is_transient(exc))
                continue
            self._reclaim_outage.recovered()
            if claimed:
                log.warning("reclaimed %d entries of %s from stalled consumers", len(claimed), cfg.stream)
                if self.metrics is not None:
                    self.metrics.reclaimed_entries.inc(len(claimed))
                await self.channel.send(value=claimed)


class BatchRunner:
    """Handles batches for one agent actor: retries outages, isolates failing entries, dead-letters them."""

    def __init__(
        self,
        reader: GroupReader,
        handler: BatchHandler,
        *,
        heartbeat: Heartbeat,
        is_transient: TransientCheck = default_is_transient,
        name: str = "handler",
        metrics: StreamConsumerMetrics | None = None,
    ) -> None:
        self.reader = reader
        self.handler = handler
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.is_transient = is_transient
        cfg = reader.config
        self.handling = Outage(
            f"handling batches of {cfg.stream}",
            logger=log,
            on_change=lambda problem: heartbeat.report(f"{cfg.group} {name}", problem),
        )
        self.acknowledging = Outage(
            f"acknowledging entries of {cfg.stream}",
            logger=log,
            on_change=lambda problem: heartbeat.report(f"{cfg.group} {name} ack", problem),
        )

    async def run(self, batch: Batch) -> None:
        """Handle `batch` until every entry is handled and acknowledged, or left pending for a later delivery
        (it failed on its own), or dead-lettered (it failed on its own at its last allowed delivery)."""
        failed = await self.isolate(batch)
        if failed:
            await self._settle(failed)

    async def isolate(self, batch: Batch) -> list[tuple[StreamEntry, BaseException]]:
        """Handle and acknowledge what succeeds; return the entries that fail on their own, with their errors."""
        failure: Exception | None = None
        attempts = 0

        async def handle() -> None:
            nonlocal attempts
            if attempts and self.metrics is not None:  # handed to the handler again after it failed (an outage)
                self.metrics.redelivered_entries.inc(len(batch))
            attempts += 1
            await self.handler(batch)

        try:
            await self._retry(self.handling, handle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
        if failure is None:
            await self._acknowledge(batch)
            return []
        if len(batch) == 1:
            return [(batch[0], failure)]
        # Outside the `except` block: the halves' own failures are not chained to this one in the logs.
        log.warning(
            "handler failed on %d entries of %s (%s); splitting the batch to find the entries that fail",
            len(batch),
            batch.stream,
            describe(failure),
        )
        if self.metrics is not None:  # every entry of the batch goes to the handler again, in one half or the other
            self.metrics.redelivered_entries.inc(len(batch))
        middle = len(batch) // 2
        failed: list[tuple[StreamEntry, BaseException]] = []
        for half in (batch[:middle], batch[middle:]):
            failed += await self.isolate(Batch(half, batch.stream, batch.group))
        return failed

    async def _retry(self, outage: Outage, operation: Callable[[], Awaitable[None]]) -> None:
        await retry(
            operation,
            backoff=self.reader.config.backoff,
            outage=outage,
            is_transient=self.is_transient,
            beat=self.heartbeat.beat,
        )

    async def _acknowledge(self, batch: Batch) -> None:
        if batch.acknowledged:  # inside the handler's own transaction
            self.reader.forget(batch)
            return
        try:
            await self._retry(self.acknowledging, lambda: self.reader.ack(batch))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not an outage (those are retried above): unacknowledged entries are delivered again and handled
            # again (harmless: handlers are idempotent).
            log.exception("acknowledging %d entries of %s failed", len(batch), batch.stream)
            self.reader.forget(batch)

    async def _settle(self, failed: list[tuple[StreamEntry, BaseException]]) -> None:
        cfg = self.reader.config
        entries = [entry for entry, _ in failed]
        counts: dict[str, int] = {}

        async def count() -> None:
            counts.update(await self.reader.delivery_counts(entries))

        try:
            await self._retry(self.acknowledging, count)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the delivery counts of %d failed entries of %s", len(entries), cfg.stream)
        for entry, exc in failed:
            deliveries = counts.get(entry.id)
            reason = describe(exc)[:MAX_REASON_CHARS]
            about = {REQUEST_ID: entry.fields.get("request_id")}  # the bid's, in both agents' streams
            if deliveries is None:
                # No longer pending: the group was recreated (Redis restarted empty) or the entry was trimmed.
                log.warning(
                    "entry %s of %s failed and is no longer pending: %s", entry.id, cfg.stream, reason, extra=about
                )
                self.reader.forget([entry])
            elif deliveries >= cfg.max_deliveries:
                log.error(
                    "dead-lettering entry %s of %s to %s: failed at delivery %d of %d: %s",
                    entry.id,
                    cfg.stream,
                    cfg.dead_letter_stream,
                    deliveries,
                    cfg.max_deliveries,
                    reason,
                    exc_info=exc,
                    extra=about,
                )
                try:
                    await self.reader.bury(entry, reason=reason, deliveries=deliveries)
                    if self.metrics is not None:
                        self.metrics.dead_letter.inc()
                except asyncio.CancelledError:
                    raise
                except Exception as bury_exc:
                    log.warning(
                        "dead-lettering %s failed (%s); it stays pending and is delivered again",
                        entry.id,
                        describe(bury_exc),
                        extra=about,
                    )
                    self.reader.forget([entry])
            else:
                log.warning(
                    "entry %s of %s failed on its own at delivery %d of %d (%s); it stays pending and is "
                    "delivered again after %d ms",
                    entry.id,
                    cfg.stream,
                    deliveries,
                    cfg.max_deliveries,
                    reason,
                    cfg.claim_idle_ms,
                    exc_info=exc if deliveries == 1 else None,
                    extra=about,
                )
                self.reader.forget([entry])


async def handle_until_done(
    reader: GroupReader,
    handler: BatchHandler,
    batch: Batch,
    *,
    heartbeat: Heartbeat | None = None,
    is_transient: TransientCheck = default_is_transient,
) -> None:
    """One batch through a fresh `BatchRunner` (what each agent actor does with its own runner)."""
    runner = BatchRunner(reader, handler, heartbeat=heartbeat or Heartbeat(None), is_transient=is_transient)
    await runner.run(batch)


def group_agent(
    app: faust.App,
    redis: aioredis.Redis,
    config: GroupConfig,
    handler: BatchHandler,
    *,
    name: str,
    heartbeat: Heartbeat | None = None,
    is_transient: TransientCheck = default_is_transient,
    metrics: StreamConsumerMetrics | None = None,
) -> GroupSource:
    """Register a Faust agent that handles batches of `config.stream` read through `config.group`.

    Returns the source service (already registered with the app, started by the worker). `heartbeat`
    (default: one on `config.heartbeat_file`) is shared with the worker's other loops.
    """
    channel: faust.ChannelT[Any] = app.channel(maxsize=config.read_ahead)
    reader = GroupReader(redis, config)
    beat = heartbeat or Heartbeat(config.heartbeat_file)
    actors = itertools.count(1)

    async def agent(batches: faust.StreamT[Batch]) -> None:
        actor = next(actors)
        runner = BatchRunner(
            reader,
            handler,
            heartbeat=beat,
            is_transient=is_transient,
            name="handler" if config.concurrency == 1 else f"handler {actor}",
            metrics=metrics,
        )
        async for batch in batches:
            await runner.run(batch)

    agent.__name__ = agent.__qualname__ = name
    app.agent(channel, name=name, concurrency=config.concurrency)(agent)
    source = GroupSource(reader, channel, heartbeat=beat, is_transient=is_transient, metrics=metrics)
    app.service(source)  # type: ignore[arg-type]  # Faust accepts instances; its annotation says class.
    return source
