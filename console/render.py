"""Rendering a page: the template's own context plus who is asking, the CSRF token and the current path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from console.security import USER, SessionUser, csrf_token


async def page(request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200) -> web.Response:
    user: SessionUser | None = request.get(USER)
    try:
        token = await csrf_token(request)
    except RuntimeError:  # outside the session middleware (an early error page): such a page has no forms
        token = ""
    full = {"user": user, "csrf_token": token, "path": request.path, **context}
    return aiohttp_jinja2.render_template(template, request, full, status=status)
