"""Sessions, authentication, CSRF and security headers: the middlewares every console request goes through.

* Sessions live in an encrypted, signed cookie (aiohttp-session's EncryptedCookieStorage: Fernet, i.e.
  AES-128-CBC + HMAC-SHA256, keyed by CONSOLE_SESSION_KEY). The cookie is HttpOnly, SameSite=Lax (a link from
  an alert still opens the console logged in; every state change is a POST, which Lax never sends cross-site,
  and carries a CSRF token anyway), Secure whenever the request came over TLS (directly, or per
  X-Forwarded-Proto when CONSOLE_TRUST_FORWARDED is on), and expires after CONSOLE_SESSION_IDLE_S without use
  (cookie Max-Age, the Fernet token's age, and the session's own `seen` stamp) and CONSOLE_SESSION_MAX_S at most.
* Each request re-checks the user in PostgreSQL (cached for USER_RECHECK_S): a disabled user, or one whose
  password changed (the session epoch moved on), is logged out. When PostgreSQL cannot answer, read-only pages
  still open with a warning (the cookie itself is authentic and unexpired), state changes are refused.
* CSRF: a synchronizer token, random per session and rotated at login, must come with every POST (form field
  `csrf_token` or header X-CSRF-Token) and is compared in constant time.
* Headers: a strict Content-Security-Policy (only the console's own scripts and styles, no inline code, no
  framing), X-Frame-Options DENY, nosniff, no referrer, no caching of pages, HSTS over TLS.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp_session import Session, get_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from console.backends import BackendUnavailable
from console.users import User

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COOKIE_NAME: Final = "bidengine_console"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
# A disabled user, or a changed password, ends sessions within this many seconds.
USER_RECHECK_S: Final = 5.0
# The session's `seen` stamp (and so the cookie) is rewritten at most this often.
SEEN_RESOLUTION_S: Final = 30
CSRF_REFUSED: Final = (
    "Refused: this form has expired or did not come from the console. Go back, reload the page and try again."
)
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths open without a session.
PUBLIC_PATHS: Final = frozenset({"/login", "/health", "/ready"})
PUBLIC_PREFIXES: Final = ("/static/",)
# Requests a page makes by itself (live updates): they do not count as use for the idle timeout.
BACKGROUND_PATHS: Final = frozenset({"/flags/feed"})

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


class SessionKeyError(ValueError):
    """CONSOLE_SESSION_KEY is missing or not a Fernet key."""


def session_fernet(key: str | None) -> Fernet:
    if not key:
        raise SessionKeyError(
            "CONSOLE_SESSION_KEY is required: a Fernet key, e.g. "
            '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"` '
            "(`bidengine run` generates one for development)"
        )
    try:
        return Fernet(key)
    except (ValueError, TypeError) as exc:
        raise SessionKeyError("CONSOLE_SESSION_KEY is not a Fernet key (urlsafe base64 of 32 bytes)") from exc


class SessionCookies(EncryptedCookieStorage):
    """EncryptedCookieStorage whose Secure flag follows the request's scheme."""

    def __init__(self, fernet: Fernet, *, idle_s: int) -> None:
        super().__init__(fernet, cookie_name=COOKIE_NAME, max_age=idle_s, httponly=True, samesite="Lax", path="/")

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        params: dict[str, Any] = {**self._cookie_params, "secure": request.secure}
        if session.empty:
            response.del_cookie(self.cookie_name, path=params["path"], domain=params["domain"])
            return
        data = self._encoder(self._get_session_data(session)).encode("utf-8")
        response.set_cookie(self.cookie_name, self._fernet.encrypt(data).decode("utf-8"), **params)


@dataclass(frozen=True, slots=True)
class SessionUser:
    """Who is asking, as the session says and PostgreSQL confirmed (or could not confirm: `unverified`)."""

    id: int
    name: str
    role: str
    unverified: str | None = None  # why PostgreSQL could not re-check the session, when it could not

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


USER: Final = web.RequestKey("user", SessionUser)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


async def csrf_token(request: web.Request) -> str:
    session = await get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        session["csrf"] = token
    return token


def start_session(session: Session, user: User) -> None:
    """A fresh session for a user who just logged in (a new CSRF token, nothing kept from before)."""
    session.invalidate()
    now = int(time.time())
    session.update(
        {
            "uid": user.id,
            "name": user.name,
            "role": user.role,
            "epoch": user.session_epoch,
            "csrf": new_csrf_token(),
            "started": now,
            "seen": now,
        }
    )


def safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no `//`): the login form cannot redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 0x20 for ch in target):
        return "/"
    return target


class UserCache:
    """Users recently confirmed by PostgreSQL, so a page does not cost a query per request."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[float, User | None]] = {}

    def get(self, user_id: int) -> User | bool | None:
        entry = self._entries.get(user_id)
        if entry is None or time.monotonic() - entry[0] > USER_RECHECK_S:
            return False
        return entry[1]

    def put(self, user_id: int, user: User | None) -> None:
        if len(self._entries) > 10_000:  # bounded: there are only so many users
            self._entries.clear()
        self._entries[user_id] = (time.monotonic(), user)

    def forget(self, user_id: int) -> None:
        self._entries.pop(user_id, None)


def forwarded_middleware() -> Any:
    """Behind the chart's ingress: the scheme and client address the proxy saw (CONSOLE_TRUST_FORWARDED)."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        changes: dict[str, Any] = {}
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
        if hops:
            changes["remote"] = hops[-1][:64]  # the hop our proxy appended; earlier ones are client-supplied
        return await handler(request.clone(**changes) if changes else request)

    return forwarded


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure_headers(request, exc)
        raise
    _secure_headers(request, response)
    return response


def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    if request.secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def wants_json(request: web.Request) -> bool:
    return request.path.endswith("/feed") or "application/json" in request.headers.get("Accept", "")


def _login_redirect(request: web.Request, reason: str) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response({"errors": [reason]}, status=401)
    target = request.path_qs if request.method == "GET" else "/"
    raise web.HTTPSeeOther(location=str(request.app.router["login"].url_for().with_query(next=target, why=reason)))


def auth_middleware(
    *, idle_s: int, max_s: int, load_user: Callable[[int], Awaitable[User | None]], cache: UserCache
) -> Any:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request.path):
            return await handler(request)
        session = await get_session(request)
        uid = session.get("uid")
        if not isinstance(uid, int):
            return _login_redirect(request, "Please log in.")
        now = int(time.time())
        seen, started = session.get("seen", 0), session.get("started", 0)
        if now - seen > idle_s or now - started > max_s:
            session.invalidate()
            return _login_redirect(request, "Your session expired; please log in again.")
        unverified: str | None = None
        user = cache.get(uid)
        if user is False:
            try:
                user = await load_user(uid)
            except BackendUnavailable as exc:
                unverified = f"Your session could not be re-checked: {exc}."
            else:
                cache.put(uid, user)
        if unverified is None:
            if not isinstance(user, User) or not user.enabled or user.session_epoch != session.get("epoch"):
                session.invalidate()
                return _login_redirect(request, "Your session has ended; please log in again.")
            request[USER] = SessionUser(user.id, user.name, user.role)
        else:
            if request.method in UNSAFE_METHODS:
                raise web.HTTPServiceUnavailable(text=unverified)
            request[USER] = SessionUser(uid, str(session.get("name", "")), str(session.get("role")), unverified)
        if request.path not in BACKGROUND_PATHS and now - seen >= SEEN_RESOLUTION_S:
            session["seen"] = now
        return await handler(request)

    return authenticate


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in UNSAFE_METHODS:
        session = await get_session(request)
        expected = session.get("csrf")
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not isinstance(expected, str) or not sent or not hmac.compare_digest(expected, sent):
            log.warning(
                "refused %s %s without a valid CSRF token from %s", request.method, request.path, request.remote
            )
            raise web.HTTPForbidden(text=CSRF_REFUSED)
    return await handler(request)


def current_user(request: web.Request) -> SessionUser:
    return request[USER]
