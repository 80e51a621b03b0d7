"""Routing replies from this gateway's reply stream to the requests waiting for them."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left

from redis import asyncio as aioredis

from redis_streams.pipe import execute_packed, read_entries
from redis_streams.retry import Backoff, Outage, is_redis_transient
from schema.events import BidReply, EventDecodeError, decode_replies
from telemetry.metrics import HistogramChild

log = logging.getLogger(__name__)


class ReplyTimeout(Exception):
    """No reply came within the gateway's reply timeout."""


class ReplyRouter:
    """Reads one reply stream and resolves the future of the request each reply belongs to.

    Deadlines are checked by one sweeper instead of a timer per request: requests are registered in
    arrival order with the same timeout, so the oldest ones are always at the front of the dict.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        *,
        timeout_s: float,
        read_count: int,
        read_block_ms: int,
        ttl_s: int,
        backoff: Backoff,
        reply_wait: HistogramChild | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.timeout_s = timeout_s
        self.read_count = read_count
        self.read_block_ms = read_block_ms
        self.ttl_s = ttl_s
        self.backoff = backoff
        # Each reply's wait (publish to reply) is observed here, from the deadline the request was registered
        # with, so the handler pays for no clock read of its own. None: not recorded (METRICS_ENABLED=false).
        self.reply_wait = reply_wait
        self._outage = Outage(f"reading replies from {stream}", logger=log)
        self._waiting: dict[str, tuple[asyncio.Future[BidReply], float]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def expect(self, reply_id: str) -> asyncio.Future[BidReply]:
        future: asyncio.Future[BidReply] = asyncio.get_running_loop().create_future()
        self._waiting[reply_id] = (future, time.monotonic() + self.timeout_s)
        return future

    def forget(self, reply_id: str) -> None:
        self._waiting.pop(reply_id, None)

    async def run(self) -> None:
        """Read replies until cancelled; survive Redis outages (waiting requests then time out), retrying with
        back-off and logging the outage once. Never raises: a dead reply reader would turn every bid into a 504."""
        last_id = "0-0"
        last_upkeep = 0.0
        while True:
            try:
                (response,) = await execute_packed(
                    self.redis,
                    [("XREAD", "COUNT", self.read_count, "BLOCK", self.read_block_ms, "STREAMS", self.stream, last_id)],
                    idempotent=True,
                )
                if isinstance(response, Exception):
                    raise response
                for entry_id, fields in read_entries(response):
                    last_id = entry_id
                    if fields is not None:
                        self._deliver(fields)
                now = time.monotonic()
                if now - last_upkeep > 1.0:
                    last_upkeep = now
                    await self._upkeep(last_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._outage.failed(exc, transient=is_redis_transient(exc))
                await asyncio.sleep(self.backoff.delay(self._outage.failures))
            else:
                self._outage.recovered()

    def _deliver(self, fields: dict[str, str]) -> None:
        try:
            replies = decode_replies(fields)
        except EventDecodeError as exc:
            log.error("ignoring malformed reply on %s: %s", self.stream, exc)
            return
        reply_wait = self.reply_wait
        # A request's deadline is its registration plus timeout_s: this minus its deadline is its wait so far.
        as_deadline = time.monotonic() + self.timeout_s
        for reply in replies:
            waiting = self._waiting.pop(reply.reply_id, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(reply)
                if reply_wait is not None:  # HistogramChild.observe, inline: no call per reply
                    waited = as_deadline - waiting[1]
                    reply_wait.counts[bisect_left(reply_wait.bounds, waited)] += 1
                    reply_wait.sum += waited

    async def _upkeep(self, last_id: str) -> None:
        # Replies already read are never read again: drop them, and let the key expire if we die.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xtrim(self.stream, minid=last_id, approximate=True)
            pipe.expire(self.stream, self.ttl_s)
            await pipe.execute()

    async def sweep(self, interval_s: float = 0.05) -> None:
        """Fail the requests whose deadline passed, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            expired: list[str] = []
            for reply_id, (future, deadline) in self._waiting.items():
                if deadline > now:
                    break
                expired.append(reply_id)
                if not future.done():
                    future.set_exception(ReplyTimeout())
                    if self.reply_wait is not None:
                        self.reply_wait.observe(self.timeout_s)
            for reply_id in expired:
                del self._waiting[reply_id]
