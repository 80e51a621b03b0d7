"""The gateway's HTTP edge: aiohttp's server protocol with read deadlines, half-close and bounded connections.

aiohttp (3.14) parses HTTP well but bounds nothing in time: a client that sends its headers one byte at a
time, declares a longer body than it sends, or stalls inside a chunked body holds a connection (and a
handler waiting in `request.read()`) for as long as it likes; a client that half-closes its socket after
a complete request gets no answer although the request is handled. `EdgeProtocol` (a `RequestHandler`)
and `EdgeServer` add, per connection:

* a **header deadline**: the headers of a request must be complete `HEADER_TIMEOUT_S` after its first byte
  arrived, else `408` (JSON) and the connection is closed; headers are also capped at `MAX_HEADER_BYTES`
  in total (`431`), on top of aiohttp's per-line and per-field limits (8190 bytes, 128 fields);
* a **body deadline**: the body must be complete `BODY_TIMEOUT_S` after the end of the headers; then the
  handler's read fails with `BodyTimeout`, it answers `408` and the connection is closed; if the request
  was already answered (aiohttp reads and discards the rest of an unread body), it is closed;
* an **idle deadline**: aiohttp's keep-alive timeout (`KEEPALIVE_TIMEOUT_S`) closes idle connections;
* **half-close**: a client that shuts down its sending side still gets the answers to the complete requests
  it sent (RFC 9112 9.6 lets a half-closed client read); a body cut short by the EOF is a `400`; the last
  answer carries `Connection: close` and the connection is closed after it;
* a **lingering close** (RFC 9112 9.6): a connection the gateway closes first (after a `408`, a `431`, a
  `400`, an idle timeout) is half-closed after its last answer, and what the client still sends is read
  and discarded until the client closes too, or for at most `LINGERING_CLOSE_S`. Closing a socket whose
  peer is still sending makes the kernel answer the next segment with a reset, and a client that gets the
  reset before it has read the answer loses the answer (asyncio's `StreamReader` does; so does any client
  that reads after it writes);
* a **connection cap**: past `MAX_CONNECTIONS`, a new connection is answered `503` and closed at once (no
  lingering: a refused connection must cost nothing), so memory is bounded by the cap times what one
  connection may hold (headers, a 16 KiB body, buffers); lingering connections count against the cap;
* **JSON errors**: what aiohttp's parser refuses (malformed request line or headers, a bad
  Content-Length, Content-Length with Transfer-Encoding, a line over 8190 bytes) is answered
  `400 {"errors": ["Bad request: ..."]}` and the connection closed; the `HTTPException`s of aiohttp's
  router (404, 405, 417, ...) are answered as JSON; an unexpected exception is logged and a JSON 500.
  Both happen where aiohttp turns them into responses (`finish_response`, `handle_error`), so the hot path
  pays for no wrapper around the application's handler.

The deadlines cost the hot path no timer: one sweep per server walks the connections a few times per
shortest deadline (at most once a second) and compares the times each connection recorded when its
state changed. A request that arrives whole in one read records nothing but two attribute stores.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ingest.body import BodyIncomplete, BodyTimeout
from ingest.errors import error_response, http_exception_response, parser_message, raw_error
from ingest.metrics import GATEWAY_METRICS, GatewayMetrics
from schema.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    lingering_close_s: float
    max_header_bytes: int
    max_connections: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            lingering_close_s=settings.lingering_close_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        )

    @property
    def sweep_interval_s(self) -> float:
        """Deadlines fire at most this late: a quarter of the shortest one, between 20 ms and 1 s."""
        return min(1.0, max(0.02, min(self.header_timeout_s, self.body_timeout_s) / 4))


class EdgeProtocol(RequestHandler):
    """One connection: aiohttp's protocol plus the times the sweep checks (see the module docstring)."""

    __slots__ = (
        "_answered",
        "_body",
        "_body_since",
        "_eof",
        "_header_bytes",
        "_header_since",
        "_limits",
        "_lingering",
        "_lingering_since",
        "_metrics",
    )

    def __init__(
        self,
        manager: EdgeServer,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: EdgeLimits,
        metrics: GatewayMetrics | None = None,
        **kwargs: Any,
    ):
        super().__init__(manager, loop=loop, **kwargs)
        self._limits = limits
        # Requests answered are recorded where aiohttp would write its access log (`log_access`, after the
        # answer is written): aiohttp then reads the loop's clock when it starts a request, which is all the
        # duration costs. None (METRICS_ENABLED=false): aiohttp reads no clock and nothing is recorded.
        self._metrics = metrics
        self._logging_enabled = metrics is not None
        self._header_since = 0.0  # when the first byte of unfinished headers arrived (0: none pending)
        self._header_bytes = 0
        self._body: StreamReader | None = None  # the body being received, if incomplete
        self._body_since = 0.0
        self._answered: StreamReader | None = None  # the body of the request answered last
        self._eof = False  # the client shut down its sending side
        self._lingering: asyncio.Transport | None = None  # half-closed by us, drained until the client closes
        self._lingering_since = 0.0

    # --- connection events ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, EdgeServer) and manager.full():
            self._force_close = True  # nothing this connection sends is parsed
            retry = {"Retry-After": str(self._limits.retry_after_s)}
            transport = cast(asyncio.Transport, transport)  # a stream transport (uvloop's is no subclass)
            transport.write(raw_error(503, "Service unavailable: too many connections to this gateway", retry))
            transport.close()
            if self._metrics is not None:
                self._metrics.refused_by_edge(503)
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # The hot path, run for every read: a whole request in one read costs two len()s, the base call and a
        # getattr (base methods are called through module-level names, cheaper than super(): docs/benchmarks.md).
        messages = self._messages
        queued = len(messages)
        _base_data_received(self, data)
        if len(messages) != queued:
            if self._body is not None and self._body_malformed():
                return
            # The headers of a request are complete (aiohttp queues it now): its body is on the clock.
            if self._header_since:
                self._header_since = 0.0
                self._header_bytes = 0
            payload = messages[-1][1]
            # StreamReader._eof, without a method call; the shared empty payload has none and is complete.
            if getattr(payload, "_eof", True):
                self._body = None
            else:
                self._body = payload
                self._body_since = self._loop.time()
        elif self._body is not None:
            if self._body.is_eof() or self._body.exception() is not None:
                self._body = None
        elif data and not self._force_close:
            # Bytes of headers that are not complete yet.
            if not self._header_since:
                self._header_since = self._loop.time()
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.max_header_bytes:
                message = f"Request headers are larger than {self._limits.max_header_bytes} bytes"
                self._answer_and_close(431, message)

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio's contract: True keeps the socket open
        if self._force_close or self._close:
            return False
        self._eof = True
        if self._idle():
            return False  # between requests (or inside unfinished headers): nothing to answer, close
        body = self._body
        if body is not None:
            self._body = None
            if body is self._answered:
                body.feed_eof()  # answered already: ends aiohttp's reading of the rest
            else:
                self._lingering_time = 0.0
                body.set_exception(BodyIncomplete())  # the handler answers 400
        return True  # keep our sending side open for the answers; the last one closes the connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lingering = None
        self.transport = None  # gone: aiohttp's close on the way out must not linger on it
        super().connection_lost(exc)
        self._body = self._answered = None

    def force_close(self) -> None:
        """aiohttp's close of this connection (every path: errors, deadlines, idle, shutdown) as a lingering close.

        The answers written so far go out, then our FIN (`write_eof`); the transport keeps reading, and aiohttp
        discards what it reads once `_force_close` is set. The client's own FIN ends it (`eof_received`), or
        the sweep does after LINGERING_CLOSE_S."""
        transport = self.transport
        # A client that has shut down its sending side sends nothing that could be answered with a reset.
        if transport is None or self._eof or self._limits.lingering_close_s <= 0 or transport.is_closing():
            _base_force_close(self)
            return
        self.transport = None  # aiohttp's own close finds nothing to close
        _base_force_close(self)
        try:
            transport.write_eof()
            if not transport.is_reading():  # paused by aiohttp's flow control: drain it anyway
                transport.resume_reading()
        except (OSError, RuntimeError):  # the socket is already gone, or cannot half-close
            transport.close()
            return
        self._lingering = transport
        self._lingering_since = self._loop.time()

    def stop_lingering(self) -> None:
        lingering, self._lingering = self._lingering, None
        if lingering is not None:
            lingering.close()

    # --- answers -------------------------------------------------------------------------------------

    def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        self._answered = request._payload
        if self._eof or not self._lingering_time or isinstance(resp, HTTPException):
            resp = self._last_or_json(request, resp)
        if resp.keep_alive is False:  # forced: an error, or the last answer of a half-closed connection
            return self._finish_then_close(request, resp, start_time)
        return _base_finish_response(self, request, resp, start_time)

    async def _finish_then_close(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """The last answer, then our lingering close (aiohttp would close the socket itself, at once)."""
        try:
            return await _base_finish_response(self, request, resp, start_time)
        finally:
            self.force_close()

    def _last_or_json(self, request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
        if isinstance(resp, HTTPException) and resp.status >= 400:
            # Raised by the router or the Expect check (404, 405, 417, ...): aiohttp would send its text.
            # The router keeps the exception, whose traceback holds the frames that hold the request: a
            # reference cycle freed only by a full collection, unless the traceback goes.
            resp.__traceback__ = None
            resp = http_exception_response(resp, request)
        if ((self._eof and not self._messages) or not self._lingering_time) and isinstance(resp, web.StreamResponse):
            # The last answer: the client sends nothing more, or this connection cannot read another request.
            resp.force_close()
        return resp

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what its parser refused, and to an exception escaping a handler: JSON."""
        if isinstance(exc, ConnectionError):  # the client went away mid-request: nobody to answer, no bug
            log.debug("connection lost answering %s %s: %s", request.method, request.path, exc)
        elif status >= 500:
            log.error("unexpected error answering %s %s", request.method, request.path, exc_info=exc)
        else:
            log.debug("refused a request from %s: %s", request.remote, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was partly sent: no error response can follow it")
        if exc is not None:
            # The exception holds the frame that raised or queued it: without this, every such request
            # would stay in memory until the next full garbage collection.
            exc.__traceback__ = None
        text = "Internal server error" if status >= 500 else parser_message(message)
        response = error_response(status, [text])
        response.force_close()
        return response

    # --- deadlines (called by the server's sweep) ----------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        if self._force_close:
            if self._lingering is not None and now - self._lingering_since >= self._limits.lingering_close_s:
                self.stop_lingering()
            return
        body = self._body
        if body is not None:
            if body.is_eof() or body.exception() is not None:
                self._body = None
            elif now - self._body_since >= self._limits.body_timeout_s:
                self._body_timed_out(body)
        elif self._header_since and now - self._header_since >= self._limits.header_timeout_s:
            if self._idle():  # never write over the answer to an earlier request still being handled
                self._answer_and_close(408, "The request headers were not received in time")
        elif self._eof and self._idle():
            self.force_close()  # every answer is out and the client sends nothing more

    def _body_timed_out(self, body: StreamReader) -> None:
        self._body = None
        if body is self._answered or self._idle():
            self.force_close()  # answered already, aiohttp is reading the rest of the body: stop that
        else:
            self._lingering_time = 0.0  # answer, then close without waiting for the rest of the body
            body.set_exception(BodyTimeout())  # the handler's read fails, it answers 408

    def _body_malformed(self) -> bool:
        """A message arrived while a body was being received: True if it is the parser's error about that body.

        HTTP/1.1 parses sequentially: while a body is still incomplete, the only message that can appear is
        the parser's error about it (a malformed chunk, maybe in a later segment than the headers). aiohttp
        would leave the handler waiting in read() forever and queue a second answer: fail the read instead.
        """
        body = self._body
        self._body = None
        if body is None or body.is_eof() or body.exception() is not None:
            return False
        if body is self._answered:
            self.force_close()  # answered already: nothing more to say on this connection
            return True
        error = self._messages.pop()[0]  # answered through the request it belongs to, not a second time
        reason = parser_message(getattr(error, "message", None)).removeprefix("Bad request: ")
        self._lingering_time = 0.0  # the parser cannot go on: close after the answer
        body.set_exception(RequestPayloadError(reason))
        return True

    def _idle(self) -> bool:
        """Waiting for the next request: no request of this connection is being handled or answered."""
        if not self._request_count:  # none parsed yet (the handler task may not even have started)
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _answer_and_close(self, status: int, message: str) -> None:
        if self.transport is not None and self._idle():
            self.transport.write(raw_error(status, message))
            if self._metrics is not None:
                self._metrics.refused_by_edge(status)
        self.force_close()

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        """aiohttp's access-log hook, once an answer is written: the request metrics (no access log is kept).

        Inline and without a call per metric: one dict look-up of the answer's children (by aiohttp's matched
        route object, the method and the status), an addition, and one bisect into the duration buckets."""
        metrics = self._metrics
        if metrics is None or time is None:
            return
        # A web.Request's routing result (its `match_info` property asserts there is one): None for a request
        # the parser refused, or one answered before routing.
        match_info = getattr(request, "_match_info", None)
        route = getattr(match_info, "_route", None)
        method, status = request.method, response.status
        series = metrics.answers.get((route, method, status)) or metrics.series(route, method, status)
        series.count.value += 1
        duration = series.duration
        elapsed = self._loop.time() - time
        duration.counts[bisect_left(duration.bounds, elapsed)] += 1
        duration.sum += elapsed


_base_data_received = RequestHandler.data_received
_base_force_close = RequestHandler.force_close
_base_finish_response = RequestHandler.finish_response


class EdgeServer(web.Server):
    """aiohttp's `Server` making `EdgeProtocol`s, with the connection cap and the deadline sweep."""

    def __init__(
        self, handler: Handler, *, limits: EdgeLimits, metrics: GatewayMetrics | None = None, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.metrics = metrics
        self._closed = False
        self._sweeper = self._loop.call_later(limits.sweep_interval_s, self._sweep)

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self, loop=self._loop, limits=self.limits, metrics=self.metrics, **self._kwargs)

    def full(self) -> bool:
        return len(self._connections) >= self.limits.max_connections

    def _sweep(self) -> None:
        try:
            now = self._loop.time()
            for protocol in list(self._connections):
                if isinstance(protocol, EdgeProtocol):
                    protocol.check_deadlines(now)
        except Exception:  # a timer callback that raised would never run again: no deadline would fire
            log.exception("checking connection deadlines failed; checking again at the next sweep")
        finally:
            if not self._closed:
                self._sweeper = self._loop.call_later(self.limits.sweep_interval_s, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        connections = list(self._connections)  # aiohttp forgets them; the lingering ones must still be closed
        try:
            await super().shutdown(timeout)
        finally:
            self._closed = True
            self._sweeper.cancel()
            for protocol in connections:
                if isinstance(protocol, EdgeProtocol):
                    protocol.stop_lingering()


class EdgeRunner(web.AppRunner):
    """An `AppRunner` serving the application through `EdgeServer`, without aiohttp's decompression."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, **kwargs)  # one log line per bid would cost more than the bid
        self.limits = EdgeLimits.from_settings(settings)
        metrics = app.get(GATEWAY_METRICS)
        self.metrics = metrics if metrics is not None and metrics.enabled else None

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application; its handler and request factory
        return EdgeServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            loop=asyncio.get_running_loop(),
            limits=self.limits,
            metrics=self.metrics,
            # A handler runs to its end when the client goes away: a bid it published is stored and a
            # retry with the same Idempotency-Key finds it; cancelling it half-way would gain nothing.
            handler_cancellation=False,
            keepalive_timeout=self.limits.keepalive_timeout_s,
            auto_decompress=False,  # ingest.body decodes gzip/deflate with its own limits and errors
            access_log=None,
        )


def edge_runner(app: web.Application, settings: Settings) -> EdgeRunner:
    return EdgeRunner(app, settings)


def serve(app: web.Application, settings: Settings) -> None:
    """Serve `app` on GATEWAY_HOST:GATEWAY_PORT through the edge until SIGTERM or SIGINT."""
    asyncio.run(_serve(app, settings))


async def _serve(app: web.Application, settings: Settings) -> None:
    runner = edge_runner(app, settings)
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit < settings.max_connections + 64:
        log.warning(
            "MAX_CONNECTIONS=%d but only %d file descriptors are allowed: connections past that are refused "
            "by the operating system, not answered 503",
            settings.max_connections,
            soft_limit,
        )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.gateway_host, settings.gateway_port, backlog=min(settings.max_connections, 4096)
        )
        await site.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()
