"""`bidengine console`: serve the on-call console (docs/console.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web
from cryptography.fernet import Fernet

from console.app import build_app
from console.backends import Backends, connect_redis, create_pool
from console.security import SessionKeyError, session_fernet
from schema.settings import Settings

log = logging.getLogger(__name__)

SESSION_KEY_ENV = "CONSOLE_SESSION_KEY"


def ensure_development_session_key(environ: dict[str, str] | os._Environ[str]) -> bool:
    """For `bidengine run` (development): a fresh session key when none is set. True when one was generated."""
    if environ.get(SESSION_KEY_ENV):
        return False
    environ[SESSION_KEY_ENV] = Fernet.generate_key().decode()
    log.warning(
        "%s is unset: generated a development key for the console (sessions end when this run stops); "
        "`bidengine console` on its own refuses to start without one",
        SESSION_KEY_ENV,
    )
    return True


async def serve(settings: Settings) -> None:
    assert settings.redis_url
    assert settings.database_url
    backends = Backends(
        connect_redis(settings.redis_url, settings),
        await create_pool(settings.database_url, settings),
        settings.console_backend_timeout_s,
    )
    app = build_app(settings, backends)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.console_host, settings.console_port)
    await site.start()
    log.info("console on http://%s:%d/", settings.console_host, settings.console_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(settings: Settings) -> int:
    if not settings.redis_url or not settings.database_url:
        raise SystemExit("REDIS_URL and DATABASE_URL are required (`bidengine run` starts embedded servers)")
    try:
        session_fernet(settings.console_session_key)
    except SessionKeyError as exc:
        raise SystemExit(str(exc)) from None
    asyncio.run(serve(settings))
    return 0
