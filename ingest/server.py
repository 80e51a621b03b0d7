"""`bidengine gateway`: serve the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from redis import asyncio as aioredis

from ingest.app import create_app
from ingest.edge import serve
from schema.settings import ServerSettings


def main(settings: ServerSettings) -> int:
    redis = aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.gateway_redis_connections,
        health_check_interval=30,
    )
    app = create_app(settings, redis, settings.database_url)
    serve(app, settings)  # read deadlines, half-close, connection cap, JSON errors: ingest/edge.py
    return 0
