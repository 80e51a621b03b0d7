"""Every error the gateway answers is JSON, `{"errors": [...]}`, whoever produces it.

* The bid handler builds its own (400, 408, 413, 415, 422, 503, 504) with `error_response`.
* aiohttp's router and request plumbing raise `web.HTTPException`s (404; 405 with `Allow`; 417 from the
  `Expect` check; anything else): the edge's protocol (`ingest.edge`) answers them as JSON with their
  status and headers (`http_exception_response`), where aiohttp would send their text. Any other exception
  is a bug: the edge logs it with its traceback and answers `500 {"errors": [...]}` (the fuzzing in tests/
  asserts that no input reaches it).
* The edge also answers what fails before a request exists (a malformed request line or headers: 400;
  headers too large: 431; read deadlines: 408; too many connections: 503), with `raw_error`, bytes
  written straight to the socket, or through the protocol's `handle_error`.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import hdrs, web


def error_response(
    status: int, errors: list[str], headers: Mapping[str, str] | None = None, **extra: str
) -> web.Response:
    return web.json_response({"errors": errors, **extra}, status=status, headers=headers)


def _describe(exc: web.HTTPException, request: web.BaseRequest) -> str:
    if exc.status == 404:
        return f"Not found: {request.method} {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get(hdrs.ALLOW, "")
        return f"Method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    if exc.status == 417:
        return f"Expect: {request.headers.get(hdrs.EXPECT, '')!r} is not supported (only 100-continue is)"
    default = f"{exc.status}: {exc.reason}"
    return exc.text if exc.text and exc.text != default else exc.reason


def http_exception_response(exc: web.HTTPException, request: web.BaseRequest) -> web.Response:
    # Keep what the exception says besides its text body (Allow, Retry-After, ...).
    headers = {
        name: value
        for name, value in exc.headers.items()
        if name not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING)
    }
    return error_response(exc.status, [_describe(exc, request)], headers)


def raw_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A complete `Connection: close` response, for the edge to write when no request object exists."""
    body = json.dumps({"errors": [message]}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parser_message(message: str | None) -> str:
    """The first line of an aiohttp parser error, without the echo of the offending bytes."""
    text = (message or "").split("\n", 1)[0].split(": b'", 1)[0].split(" b'", 1)[0].strip().rstrip(":.")
    return f"Bad request: {text}" if text else "Bad request"
