"""`bidengine gateway`: serve the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from aiohttp import web
from redis import asyncio as aioredis

from ingest.app import create_app
from schema.settings import ServerSettings


def main(settings: ServerSettings) -> int:
    redis = aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.gateway_redis_connections,
        health_check_interval=30,
    )
    app = create_app(settings, redis, settings.database_url)
    web.run_app(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        access_log=None,  # one log line per bid would cost more than the bid itself
        print=None,
    )
    return 0
