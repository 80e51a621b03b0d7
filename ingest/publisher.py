"""Coalesced XADDs: all bids accepted during one event-loop tick go to Redis in one pipelined round trip."""

from __future__ import annotations

import asyncio

from redis import asyncio as aioredis

from schema.redis_pipe import execute_packed, xadd


class StreamPublisher:
    """`await publish(fields)` returns once Redis has the entry (or raises the Redis error for it)."""

    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self._pending: list[tuple[dict[str, str], asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, fields: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            # The first entry of a tick schedules the flush; the rest of the tick's requests join it.
            loop.call_soon(self._flush_soon)
        self._pending.append((fields, future))
        await future

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[dict[str, str], asyncio.Future[None]]]) -> None:
        commands = [xadd(self.stream, fields) for fields, _ in batch]
        try:
            results = await execute_packed(self.redis, commands)
        except Exception as exc:  # the connection failed: every entry of the batch failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(None)
