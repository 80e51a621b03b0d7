"""The console's aiohttp application: routes, middlewares, templates.

Middlewares, outermost first: forwarded scheme/address (only with CONSOLE_TRUST_FORWARDED), security
headers, error pages, the encrypted session, authentication, CSRF. Templates are Jinja2 with autoescaping on
for everything, and no template marks any value safe: whatever a stream or a bid holds is shown as text.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import setup as setup_sessions

from console import auth, operations, pages
from console.backends import Backends, BackendUnavailable
from console.context import BACKENDS, LIMITER, PASSWORDS, SETTINGS, USERS
from console.ratelimit import LoginLimiter
from console.render import page
from console.security import (
    Handler,
    SessionCookies,
    UserCache,
    auth_middleware,
    csrf_middleware,
    forwarded_middleware,
    headers_middleware,
    session_fernet,
    wants_json,
)
from console.users import Passwords, User, get_user
from schema.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
ERROR_TITLES = {
    400: "Bad request",
    401: "Log in",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    413: "Too large",
    429: "Too many requests",
    503: "Unavailable",
}


def ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def when(raw: str) -> str:
    """A timestamp written by another role, shortened to UTC seconds; the raw text when it is not one."""
    try:
        moment = datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        return raw
    if moment.tzinfo is None:
        return raw
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors as the console's own page (or JSON for the live feed); unexpected ones logged, never shown."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or wants_json(request):
            raise
        return await _error_page(request, exc.status, exc.text or exc.reason)
    except BackendUnavailable as exc:
        return await _error_page(request, 503, str(exc))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return await _error_page(request, 500, "Something went wrong; the error is in the console's log.")


async def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    if message.startswith(f"{status}:"):
        message = message.split(":", 1)[1].strip()
    context = {"status": status, "title": ERROR_TITLES.get(status, "Error"), "message": message}
    return await page(request, "error.html", context, status=status)


def build_app(settings: Settings, backends: Backends, *, passwords: Passwords | None = None) -> web.Application:
    fernet = session_fernet(settings.console_session_key)
    cache = UserCache()

    async def load_user(user_id: int) -> User | None:
        return await backends.db_call(lambda conn: get_user(conn, user_id))

    middlewares: list[Any] = [forwarded_middleware()] if settings.console_trust_forwarded else []
    middlewares.append(headers_middleware)
    middlewares.append(error_pages)
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    setup_sessions(app, SessionCookies(fernet, idle_s=settings.console_session_idle_s))
    app.middlewares.append(
        auth_middleware(
            idle_s=settings.console_session_idle_s,
            max_s=settings.console_session_max_s,
            load_user=load_user,
            cache=cache,
        )
    )
    app.middlewares.append(csrf_middleware)

    app[SETTINGS] = settings
    app[BACKENDS] = backends
    app[PASSWORDS] = passwords or Passwords(settings.console_hash_concurrency)
    app[LIMITER] = LoginLimiter(backends.redis, settings)
    app[USERS] = cache

    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ago"] = ago
    env.filters["utc"] = utc
    env.filters["when"] = when
    env.filters["money"] = lambda value: f"{value:,}"

    router = app.router
    router.add_get("/login", auth.login_form, name="login")
    router.add_post("/login", auth.login)
    router.add_post("/logout", auth.logout)
    router.add_get("/health", health)
    router.add_get("/ready", ready)
    router.add_get("/", pages.home, name="home")
    router.add_get("/flags", pages.flags)
    router.add_get("/flags/feed", pages.flags_feed)
    router.add_get("/reports", pages.reports)
    router.add_get("/reports/{entry_id}", pages.report_detail)
    router.add_get("/aggregates", pages.aggregates)
    router.add_get("/bids", pages.bids_page)
    router.add_get("/bids/{bid_id}", pages.bid_detail)
    router.add_get("/pipeline", pages.pipeline_page)
    router.add_get("/pipeline/dead/{stream}/{entry_id}", operations.dead_letter)
    router.add_post("/pipeline/dead/{stream}/{entry_id}/{action}", operations.act)
    router.add_get("/competitors", pages.competitors_page)
    router.add_static("/static/", HERE / "static", append_version=False)
    app.on_cleanup.append(lambda _app: backends.close())
    return app


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Redis and PostgreSQL answer within the deadline (no detail: this path needs no login)."""
    backends = request.app[BACKENDS]
    redis = await backends.redis_outcome(lambda r: r.ping())
    db = await backends.db_outcome(lambda conn: conn.fetchval("SELECT 1"))
    body = {"redis": redis.ok, "postgresql": db.ok}
    return web.json_response(body, status=200 if redis.ok and db.ok else 503)
