"""`bidengine gateway`: serve the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc

from redis import asyncio as aioredis

from ingest.app import create_app
from ingest.edge import serve
from schema.settings import Settings


def main(settings: Settings) -> int:
    if not settings.redis_url or not settings.database_url:
        raise SystemExit("REDIS_URL and DATABASE_URL are required (`bidengine run` starts embedded servers)")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover  # uvloop is optional (not on Windows)
        pass
    redis = aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True, max_connections=64, health_check_interval=30
    )
    app = create_app(settings, redis, settings.database_url)
    # Every bid allocates ~100 short-lived objects: collect the young generation less often, and keep the
    # long-lived startup objects out of every full collection (measured: ~5% less CPU per bid).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    serve(app, settings)  # read deadlines, half-close, connection cap, JSON errors: ingest/edge.py
    return 0
