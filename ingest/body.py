"""Reading a request body: its size limit, its deadline, its content coding.

Compressed request bodies are part of the contract: `Content-Encoding: gzip` (or `x-gzip`) and `deflate`
(the zlib format RFC 9110 names, or the raw deflate stream some clients send instead). The gateway
decodes them itself, not aiohttp (the edge turns aiohttp's decompression off), so that:

* a body that does not decode (bad bytes, a wrong CRC or length, trailing bytes, a truncated stream) is a
  400, never a 500, and is decoded before anything is published;
* the size limit applies to both sizes: at most `max_bytes` on the wire and at most `max_bytes` once
  decoded; a zip bomb is refused after decoding `max_bytes + 1` bytes, never more;
* any other coding (br, zstd, compress, a list of several) is a 415 naming the ones accepted.
"""

from __future__ import annotations

import zlib

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

ACCEPTED_ENCODINGS = "gzip, deflate"
_GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for the gzip container (header, CRC-32 and length checked)
_GZIP_MAGIC = b"\x1f\x8b"


class BodyError(Exception):
    """The body cannot become a bid: the status and message to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class BodyTimeout(Exception):
    """The client did not send its whole body within the body deadline (set by the edge's sweep)."""


class BodyIncomplete(Exception):
    """The client closed its sending side before the end of the body (set by the edge on EOF)."""


def content_coding(header: str | None) -> str | None:
    """`gzip`, `deflate` or None (no coding) for a Content-Encoding header; BodyError 415 otherwise."""
    if header is None:
        return None
    codings = [coding.strip().lower() for coding in header.split(",")]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise BodyError(
        415,
        f"Content-Encoding {header.strip()!r} is not supported (use one of: {ACCEPTED_ENCODINGS}, or none)",
        {"Accept-Encoding": ACCEPTED_ENCODINGS},
    )


async def read_body(request: web.BaseRequest, max_bytes: int) -> bytes:
    """The decoded body, or BodyError with the answer (413, 415, 400, 408).

    The caller refuses a declared Content-Length over `max_bytes` first (from the headers, before reading);
    `max_bytes` must be the application's `client_max_size`, which stops `read()` past it.
    """
    coding = content_coding(request.headers.get(hdrs.CONTENT_ENCODING))
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, f"Request body is larger than {max_bytes} bytes") from None
    except (BodyTimeout, BodyIncomplete, RequestPayloadError, ConnectionError) as exc:
        # The payload keeps the exception it was failed with, and its traceback holds the frames that
        # hold the payload: drop the traceback so the request is freed now, not at the next full collection.
        exc.__traceback__ = None
        raise _payload_error(exc) from None
    if coding is None:
        return raw
    return decode(raw, coding, max_bytes)


def _payload_error(exc: Exception) -> BodyError:
    if isinstance(exc, BodyTimeout):
        return BodyError(408, "The request body was not received in time")
    if isinstance(exc, BodyIncomplete):
        return BodyError(400, "The connection was closed before the end of the request body")
    if isinstance(exc, ConnectionError):  # reset by the client: this answer will not reach it
        return BodyError(400, "The connection was lost before the end of the request body")
    # A malformed chunked encoding, or a body shorter than its Content-Length.
    return BodyError(400, f"Malformed request body: {exc}")


def decode(raw: bytes, coding: str, max_bytes: int) -> bytes:
    """Inflate a gzip or deflate body, producing at most `max_bytes + 1` bytes whatever its ratio."""
    output = bytearray()
    remaining = raw
    try:
        while True:
            decompressor = zlib.decompressobj(_GZIP if coding == "gzip" else _deflate_wbits(remaining))
            output += decompressor.decompress(remaining, max_bytes + 1 - len(output))
            if len(output) > max_bytes or decompressor.unconsumed_tail:
                raise BodyError(413, f"Request body is larger than {max_bytes} bytes once decompressed")
            if not decompressor.eof:
                raise BodyError(400, f"Request body is truncated {coding} data")
            remaining = decompressor.unused_data
            # A gzip body may hold several members (RFC 1952 2.2); anything else after the end is garbage.
            if not remaining:
                return bytes(output)
            if coding != "gzip" or not remaining.startswith(_GZIP_MAGIC):
                raise BodyError(400, f"Request body has bytes after the end of its {coding} data")
    except zlib.error as exc:
        exc.__traceback__ = None  # no reference cycle through this frame: freed at once
    raise BodyError(400, f"Request body is not valid {coding} data")


def _deflate_wbits(data: bytes) -> int:
    """zlib-wrapped deflate (the standard) when the two header bytes say so, otherwise a raw deflate stream."""
    if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS
