"""`bidengine gateway`: serve the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from aiohttp import web

from ingest.app import create_app
from redis_streams.client import connect
from schema.settings import ServerSettings


def main(settings: ServerSettings) -> int:
    redis = connect(
        settings.redis_url, settings, max_connections=settings.gateway_redis_connections, client_name="gateway"
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
