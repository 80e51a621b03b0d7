"""Small builders shared by tests of several packages."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from processors.pricing import PricedRequest
from processors.workers import group_config
from redis_streams.groups import GroupConfig, StreamEntry
from schema.database import apply_migrations
from schema.events import BidRequested
from schema.idempotency import request_fingerprint
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


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str, *, up_to: str | None = None) -> Iterator[str]:
    """A database of a test's own, migrated (fully, or up to `up_to`) and dropped afterwards; yields its URL.

    For tests that change the schema itself (partitions, the legacy layout): emptying the shared test
    database's tables would not undo that."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        apply_migrations(url, up_to=up_to)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def priced_request(
    product_id: int, current_cpc: float = 1.5, target_roas: float = 100.0, *, request_id: str | None = None
) -> PricedRequest:
    """A bid request as the pricing agent holds it after pricing, for driving its store directly."""
    request_id = request_id or str(uuid.uuid4())
    event = BidRequested(
        request_id=request_id,
        reply_to="replies:test",
        reply_id="r",
        product_id=product_id,
        current_cpc=current_cpc,
        target_roas=target_roas,
    )
    entry = StreamEntry("0-1", {"request_id": request_id, "product_id": str(product_id)})
    fingerprint = request_fingerprint(product_id, current_cpc, target_roas)
    return PricedRequest(entry, event, round(current_cpc * target_roas / 100, 2), fingerprint)
