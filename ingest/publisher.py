"""Coalesced XADDs: all bids accepted during one event-loop tick go to Redis in one pipelined round trip."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import asyncio as aioredis

from redis_streams.pipe import execute_packed, xadd


class PublishFailed(Exception):
    """Redis did not take the entry: the bid never entered the pipeline."""


class StreamPublisher:
    """`publish(fields, waiter)` queues an entry; if Redis refuses it, `waiter` fails with `PublishFailed`.

    The request then awaits only its reply: a second await for the XADD itself would cost every request
    one more task switch, and a failed XADD is reported through the same future anyway.
    """

    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self._pending: list[tuple[dict[str, str], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, fields: dict[str, str], waiter: asyncio.Future[Any]) -> None:
        if not self._pending:
            # The first entry of a tick schedules the flush; the rest of the tick's requests join it.
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self._pending.append((fields, waiter))

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[dict[str, str], asyncio.Future[Any]]]) -> None:
        try:
            results = await execute_packed(self.redis, [xadd(self.stream, fields) for fields, _ in batch])
        except Exception as exc:  # the connection failed: no entry of the batch can be trusted to be there
            results = [exc] * len(batch)
        for (_, waiter), result in zip(batch, results, strict=True):
            if isinstance(result, Exception) and not waiter.done():
                waiter.set_exception(PublishFailed(str(result)))
