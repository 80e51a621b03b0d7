"""`bidengine gateway`: serve the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from ingest.app import create_app
from ingest.edge import serve
from redis_streams.client import connect
from schema.settings import ServerSettings


def main(settings: ServerSettings) -> int:
    redis = connect(
        settings.redis_url, settings, max_connections=settings.gateway_redis_connections, client_name="gateway"
    )
    app = create_app(settings, redis, settings.database_url)
    serve(app, settings)  # read deadlines, half-close, connection cap, JSON errors: ingest/edge.py
    return 0
