"""The Faust application, booted without Kafka: Redis Streams feed its agents (see `redis_streams`)."""

from __future__ import annotations

import tempfile
from typing import Any

import faust
from faust.app.base import BootStrategy


class _NoKafkaBoot(BootStrategy):
    # No Kafka consumer, producer, conductor or tables; agents, timers, crontabs and services still run.
    enable_kafka = False
    enable_web = False


class StreamsApp(faust.App):
    """A Faust app whose agents read Redis consumer groups through channels instead of Kafka topics."""

    BootStrategy = _NoKafkaBoot

    async def on_started(self) -> None:
        # Without a Kafka consumer nothing resumes flow control, and agents would receive nothing.
        self.flow_control.resume()
        await super().on_started()


def create_app(app_id: str, **options: Any) -> StreamsApp:
    return StreamsApp(
        app_id,
        # Never contacted (Kafka is disabled at boot); Faust only requires a well-formed URL.
        broker="kafka://localhost:9092",
        store="memory://",
        web_enabled=False,
        # Faust writes a data directory at start; a temporary one keeps a read-only root filesystem working.
        datadir=tempfile.mkdtemp(prefix=f"{app_id}-"),
        **options,
    )
