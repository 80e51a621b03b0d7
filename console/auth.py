"""Logging in and out. A wrong name and a wrong password get the same answer in the same time; attempts are
rate-limited per name and per address (console.ratelimit) before any password is checked."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp_session import get_session, new_session

from console import users
from console.backends import BackendUnavailable
from console.context import BACKENDS, LIMITER, PASSWORDS, USERS
from console.render import page
from console.security import csrf_token, safe_next, start_session

log = logging.getLogger(__name__)

WRONG_CREDENTIALS = "Wrong user name or password."
MAX_NAME_LENGTH = 200


async def _login_form(
    request: web.Request, *, error: str | None = None, name: str = "", status: int = 200
) -> web.Response:
    context: dict[str, Any] = {
        "error": error,
        "why": request.query.get("why", "") if error is None else "",
        "name": name,
        "next": safe_next(request.query.get("next")),
    }
    return await page(request, "login.html", context, status=status)


async def login_form(request: web.Request) -> web.Response:
    await csrf_token(request)  # the anonymous session carries the form's CSRF token
    return await _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    name = str(form.get("name", "")).strip().lower()[:MAX_NAME_LENGTH]
    password = str(form.get("password", ""))
    target = safe_next(str(form.get("next", "")) or request.query.get("next"))
    address = request.remote or "unknown"
    backends, limiter, passwords = request.app[BACKENDS], request.app[LIMITER], request.app[PASSWORDS]
    try:
        verdict = await backends.redis_call(lambda _redis: limiter.attempt(name, address))
    except BackendUnavailable as exc:
        # No counting, no login: the limits are what stops password guessing.
        return await _login_form(request, error=f"Logging in is unavailable: {exc}.", name=name, status=503)
    if not verdict.allowed:
        minutes = max(1, round(verdict.retry_after_s / 60))
        log.warning("login refused by the rate limit for %r from %s", name, address)
        response = await _login_form(
            request, error=f"Too many login attempts. Try again in {minutes} min.", name=name, status=429
        )
        response.headers["Retry-After"] = str(verdict.retry_after_s)
        return response
    try:
        found = await backends.db_call(lambda conn: users.credentials(conn, name))
    except BackendUnavailable as exc:
        return await _login_form(request, error=f"Logging in is unavailable: {exc}.", name=name, status=503)
    user, stored_hash = found if found is not None else (None, None)
    usable = user is not None and user.enabled
    matches = await passwords.verify(stored_hash if usable else None, password)
    if user is None or not usable or not matches:
        try:
            await backends.redis_call(lambda _redis: limiter.failed(name))
        except BackendUnavailable:
            log.warning("could not count a failed login for %r: Redis unavailable", name)
        log.info("failed login for %r from %s", name, address)
        return await _login_form(request, error=WRONG_CREDENTIALS, name=name, status=401)
    assert stored_hash is not None
    new_hash = await passwords.hash(password) if passwords.needs_rehash(stored_hash) else None
    try:
        await backends.db_call(lambda conn: users.record_login(conn, user.id, new_hash))
        await backends.redis_call(lambda _redis: limiter.succeeded(name))
    except BackendUnavailable as exc:
        return await _login_form(request, error=f"Logging in is unavailable: {exc}.", name=name, status=503)
    request.app[USERS].put(user.id, user)
    start_session(await new_session(request), user)
    log.info("%s logged in from %s", user.name, address)
    raise web.HTTPSeeOther(location=target)


async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther(location="/login")
