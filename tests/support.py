"""Small builders shared by tests of several packages."""

from __future__ import annotations

import dataclasses
from typing import Any

from processors.workers import group_config
from redis_streams.groups import GroupConfig
from schema.settings import Settings


def group_config_for_tests(stream: str, group: str, consumer: str, **overrides: Any) -> GroupConfig:
    """A consumer-group config as the workers build it from default settings, with `overrides` and no heartbeat."""
    settings = Settings()
    config = group_config(
        settings,
        stream=stream,
        group=group,
        role="test",
        batch_size=settings.pricing_batch_size,
        block_ms=settings.pricing_block_ms,
        concurrency=1,
        dead_letter_stream=f"{stream}:dead",
        consumer=consumer,
    )
    return dataclasses.replace(config, **{"heartbeat_file": None, **overrides})
