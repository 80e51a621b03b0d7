"""A raw-socket HTTP client for the edge tests: bytes out exactly as written, every byte back, and how it ended."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BID = b'{"product_id": 4100, "current_cpc": 1.5, "target_roas": 150}'


def bid_body(product_id: int, current_cpc: float = 1.5, target_roas: float = 150) -> bytes:
    return json.dumps({"product_id": product_id, "current_cpc": current_cpc, "target_roas": target_roas}).encode()


def post(body: bytes, *headers: str, path: str = "/api/bid/", length: int | None = None) -> bytes:
    """A POST of `body` with a Content-Length (its own unless `length` says otherwise) and extra header lines."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        "Content-Type: application/json",
        *headers,
        f"Content-Length: {len(body) if length is None else length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked_head(*headers: str) -> bytes:
    lines = ["POST /api/bid/ HTTP/1.1", "Host: gateway", "Content-Type: application/json", *headers]
    return ("\r\n".join([*lines, "Transfer-Encoding: chunked"]) + "\r\n\r\n").encode()


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: gateway", *headers]) + "\r\n\r\n").encode()


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)

    def errors(self) -> list[str]:
        """The `errors` list of a JSON error body (asserting it is one)."""
        document = self.json()
        assert isinstance(document, dict), document
        errors = document.get("errors")
        assert isinstance(errors, list), document
        assert errors, document
        assert all(isinstance(error, str) and error for error in errors), document
        return errors


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the server ended the connection (EOF or reset) before our deadline
    elapsed_s: float  # from the first byte sent to the end
    raw: bytes = field(repr=False, default=b"")

    @property
    def final(self) -> Response:
        """The only response that is not 1xx."""
        finals = [response for response in self.responses if response.status >= 200]
        assert len(finals) == 1, self
        return finals[0]


def parse_responses(data: bytes) -> list[Response]:
    responses: list[Response] = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"incomplete response head: {data[:200]!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if int(status) < 200 else int(headers.get("content-length", "0"))
        assert len(rest) >= length, f"truncated body: {rest!r}"
        responses.append(Response(version, int(status), headers, rest[:length]))
        data = rest[length:]
    return responses


class Connection:
    """One client connection, driven step by step (send, wait for a response, half-close, read to the end)."""

    def __init__(self, address: tuple[str, int], timeout_s: float = 30.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # every send() is its own segment
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.received = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0): the client vanishes without reading anything."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _receive(self, deadline: float) -> bool:
        """Read once; False when the deadline passed or the server closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.received += chunk
        return True

    def wait_for(self, marker: bytes, timeout_s: float | None = None) -> bool:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while marker not in self.received:
            if not self._receive(deadline):
                return marker in self.received
        return True

    def finish(self, timeout_s: float | None = None) -> Exchange:
        """Read until the server closes (or the timeout passes), then close our side."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while self._receive(deadline):
            pass
        self.sock.close()
        return Exchange(parse_responses(self.received), self.closed, time.monotonic() - self.started, self.received)

    def read_responses(self, count: int, timeout_s: float | None = None) -> list[Response]:
        """Wait for `count` complete responses without closing (the connection stays usable)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                responses = parse_responses(self.received)
            except (AssertionError, ValueError):
                responses = []
            if len([r for r in responses if r.status >= 200]) >= count:
                return responses
            assert self._receive(deadline), f"no {count} responses: {self.received!r}"


def exchange(
    address: tuple[str, int],
    parts: Sequence[bytes],
    *,
    pause_s: float = 0.0,
    half_close: bool = False,
    timeout_s: float = 30.0,
) -> Exchange:
    """Send `parts` (pausing between them), maybe half-close, and read until the server closes."""
    connection = Connection(address, timeout_s)
    for index, part in enumerate(parts):
        if index and pause_s:
            time.sleep(pause_s)
        connection.send(part)
    if half_close:
        connection.half_close()
    return connection.finish(timeout_s)


def request_once(address: tuple[str, int], request: bytes, timeout_s: float = 30.0) -> Response:
    """Send one request and return its final response, without waiting for the connection to end."""
    connection = Connection(address, timeout_s)
    try:
        connection.send(request)
        return connection.read_responses(1)[-1]
    finally:
        connection.sock.close()
