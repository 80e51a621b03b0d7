"""The HTTP edge of the real gateway process, over raw sockets: encodings, deadlines, half-close, pipelining,
JSON errors. Every refused request is checked twice: its status (and whether the connection was closed), and
that nothing reached `bids:requests` or `bidding_productbid`.

Deadlines are 1 s here (HEADER_TIMEOUT_S, BODY_TIMEOUT_S): tests assert that an answer comes no sooner than
the deadline and within a generous bound after it, never an exact time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import zlib
from collections.abc import Callable

import pytest

from tests.ingest.conftest import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    KEEPALIVE_TIMEOUT_S,
    LINGERING_CLOSE_S,
    MAX_HEADER_BYTES,
    Edge,
)
from tests.ingest.raw import BID, Connection, bid_body, chunked_head, exchange, get, parse_responses, post, request_once

MAX_BODY_BYTES = 16 * 1024
LATE_S = 15.0  # how late past a deadline an answer may come on a loaded machine
EARLY_S = 0.05  # libuv's timers have millisecond resolution, and the server's clock starts at its accept


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def assert_error(edge: Edge, request: bytes, status: int) -> list[str]:
    """Send a request that must be refused: its status, a JSON error body, and nothing stored."""
    before = edge.snapshot()
    response = request_once(edge.address, request)
    assert response.status == status, response
    errors = response.errors()
    edge.assert_nothing_stored(before)
    return errors


# --- compressed bodies -----------------------------------------------------------------------------------

GZIPPED = gzip.compress(BID)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", GZIPPED),
        ("x-gzip", GZIPPED),
        ("GZIP", GZIPPED),
        ("deflate", zlib.compress(BID)),
        ("deflate", deflate_raw(BID)),
        ("identity", BID),
        ("gzip", gzip.compress(BID[:20]) + gzip.compress(BID[20:])),  # two gzip members (RFC 1952)
    ],
    ids=["gzip", "x-gzip", "upper", "deflate-zlib", "deflate-raw", "identity", "gzip-members"],
)
def test_compressed_bodies_are_accepted(edge: Edge, encoding: str, body: bytes) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [post(body, f"Content-Encoding: {encoding}", "Connection: close")])
    response = result.final
    assert response.status == 200, result
    answer = response.json()
    assert answer["adjusted_cpc"] == 2.25
    assert [(bid_id, product) for bid_id, product, _ in edge.rows_since(before)] == [(answer["bid_id"], 4100)]


CORRUPT = {
    "gzip-bad-bytes": ("gzip", b"\x1f\x8b\x08\x00" + b"not deflate data at all"),
    "gzip-not-gzip": ("gzip", BID),
    "gzip-zeroed-crc": ("gzip", GZIPPED[:-8] + b"\0\0\0\0" + GZIPPED[-4:]),
    "gzip-wrong-length": ("gzip", GZIPPED[:-4] + b"\xff\0\0\0"),
    "gzip-trailing-garbage": ("gzip", GZIPPED + b"garbage"),
    "gzip-truncated": ("gzip", GZIPPED[:-5]),
    "gzip-truncated-stream": ("gzip", GZIPPED[: len(GZIPPED) // 2]),
    "gzip-empty": ("gzip", b""),
    "deflate-bad-bytes": ("deflate", b"\x78\x9c" + b"\xff" * 20),
    "deflate-zeroed-adler": ("deflate", zlib.compress(BID)[:-4] + b"\0\0\0\0"),
    "deflate-trailing-garbage": ("deflate", zlib.compress(BID) + b"garbage"),
    "deflate-truncated": ("deflate", zlib.compress(BID)[:-6]),
    "deflate-raw-truncated": ("deflate", deflate_raw(BID)[:-3]),
}


@pytest.mark.parametrize(("encoding", "body"), CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_compressed_body_is_a_400(edge: Edge, encoding: str, body: bytes) -> None:
    errors = assert_error(edge, post(body, f"Content-Encoding: {encoding}"), 400)
    assert any(encoding in error for error in errors), errors


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_zip_bomb_is_a_413(edge: Edge, encoding: str) -> None:
    """10 MB of spaces compress below the 16 KiB wire limit; decoding stops at the limit (test_body measures)."""
    bomb = b'{"product_id": 1, "current_cpc": 1, "target_roas": 100, "pad": "' + b" " * 10_000_000 + b'"}'
    body = gzip.compress(bomb, 9) if encoding == "gzip" else zlib.compress(bomb, 9)
    assert len(body) < MAX_BODY_BYTES
    errors = assert_error(edge, post(body, f"Content-Encoding: {encoding}"), 413)
    assert errors == [f"Request body is larger than {MAX_BODY_BYTES} bytes once decompressed"]


def test_compressed_body_over_the_wire_limit_is_a_413(edge: Edge) -> None:
    body = gzip.compress(bytes(range(256)) * 200, 0)  # stored, not compressed: larger than the limit
    errors = assert_error(edge, post(body, "Content-Encoding: gzip"), 413)
    assert errors == [f"Request body is larger than {MAX_BODY_BYTES} bytes"]


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "gzip, deflate", "foo", "*"])
def test_unknown_content_encoding_is_a_415(edge: Edge, encoding: str) -> None:
    before = edge.snapshot()
    response = exchange(edge.address, [post(BID, f"Content-Encoding: {encoding}", "Connection: close")]).final
    assert response.status == 415, response
    assert response.headers["accept-encoding"] == "gzip, deflate"
    assert "Content-Encoding" in response.errors()[0]
    edge.assert_nothing_stored(before)


# --- bodies that do not arrive ---------------------------------------------------------------------------


def test_short_content_length_held_open_is_a_408_then_closed(edge: Edge) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [post(b'{"product_id": 1', length=200)], timeout_s=BODY_TIMEOUT_S + LATE_S)
    assert result.closed, result
    assert result.elapsed_s >= BODY_TIMEOUT_S - EARLY_S
    response = result.final
    assert response.status == 408, result
    assert response.errors() == ["The request body was not received in time"]
    assert response.headers["connection"] == "close"
    edge.assert_nothing_stored(before)


def test_trickled_body_is_a_408(edge: Edge) -> None:
    """A body that keeps arriving, but too slowly to be complete within BODY_TIMEOUT_S."""
    before = edge.snapshot()
    connection = Connection(edge.address, timeout_s=BODY_TIMEOUT_S + LATE_S)
    connection.send(post(b"", length=len(BID)))
    for byte in BID:
        try:
            connection.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if connection.wait_for(b"\r\n\r\n", timeout_s=0.3):
            break
    result = connection.finish()
    assert result.closed, result
    assert result.final.status == 408, result
    edge.assert_nothing_stored(before)


def test_stalled_chunked_body_is_a_408(edge: Edge) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [chunked_head() + b"10\r\n" + BID[:5]], timeout_s=BODY_TIMEOUT_S + LATE_S)
    assert result.closed, result
    assert result.elapsed_s >= BODY_TIMEOUT_S - EARLY_S
    assert result.final.status == 408, result
    edge.assert_nothing_stored(before)


@pytest.mark.parametrize(
    "bad_segment",
    [b"zz\r\n" + BID + b"\r\n0\r\n\r\n", b"5\r\n" + BID + b"\r\n", b"1;\n\r\n"],
    ids=["bad-size", "size-mismatch", "bad-extension"],
)
def test_malformed_chunk_in_a_later_segment_is_a_400_then_closed(edge: Edge, bad_segment: bytes) -> None:
    """Headers first; the malformed chunk only after the handler is provably waiting for the body."""
    before = edge.snapshot()
    connection = Connection(edge.address, timeout_s=LATE_S)
    connection.send(chunked_head("Expect: 100-continue"))
    # The gateway answers 100 Continue from its handler: the headers are parsed, it now reads the body.
    assert connection.wait_for(b"100 Continue"), connection.received
    connection.send(b"4\r\n" + BID[:4] + b"\r\n")
    connection.send(bad_segment)
    result = connection.finish()
    assert result.closed, result
    response = result.final
    assert response.status == 400, result
    assert response.errors()[0].startswith("Malformed request body"), response
    assert response.headers["connection"] == "close"
    edge.assert_nothing_stored(before)


def test_chunked_body_split_across_segments_is_accepted(edge: Edge) -> None:
    """The control for the test above: the same framing, well formed, is a bid."""
    connection = Connection(edge.address)
    connection.send(chunked_head("Expect: 100-continue", "Connection: close"))
    assert connection.wait_for(b"100 Continue")
    connection.send(b"4\r\n" + BID[:4] + b"\r\n")
    connection.send(f"{len(BID) - 4:x}\r\n".encode() + BID[4:] + b"\r\n0\r\n\r\n")
    assert connection.finish().final.status == 200


# --- headers that do not arrive --------------------------------------------------------------------------


async def drip(address: tuple[str, int], request: bytes, interval_s: float, limit_s: float) -> tuple[bytes, float, int]:
    """Send `request` one byte every `interval_s` until the server answers or closes; (answer, seconds, bytes sent)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*address)
    started = loop.time()
    sent = 0
    answer = b""
    try:
        read = asyncio.ensure_future(reader.read())
        while sent < len(request) and not read.done() and loop.time() - started < limit_s:
            try:
                writer.write(request[sent : sent + 1])
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.wait([read], timeout=interval_s)
        answer = await asyncio.wait_for(read, timeout=max(0.1, limit_s - (loop.time() - started)))
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return answer, loop.time() - started, sent


async def test_200_slow_header_connections_are_answered_408_and_closed(edge: Edge) -> None:
    """Headers one byte every 0.5 s on 200 connections: each gets a 408 after HEADER_TIMEOUT_S, then EOF."""
    before = edge.snapshot()
    request = post(BID)
    results = await asyncio.gather(*(drip(edge.address, request, 0.5, HEADER_TIMEOUT_S + LATE_S) for _ in range(200)))
    for answer, elapsed_s, sent in results:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "errors": ["The request headers were not received in time"]
        }
        assert elapsed_s >= HEADER_TIMEOUT_S - EARLY_S
        assert sent < len(request)
    edge.assert_nothing_stored(before)
    # The gateway still serves.
    assert exchange(edge.address, [post(BID, "Connection: close")]).final.status == 200


# --- closing while the client still sends ------------------------------------------------------------------


def send_past_the_answer(address: tuple[str, int], first: bytes, more: bytes, timeout_s: float) -> tuple[bytes, str]:
    """Send `first`; once the answer has arrived (unread), send `more` a byte at a time; then read to the end.

    (everything read, how it ended: "eof" or the error). A server that closes its socket at once answers the
    first byte after its close with a reset, and the reset makes the second send fail and can destroy the
    unread answer; a lingering close reads and discards those bytes and ends with a FIN."""
    with socket.create_connection(address, timeout=timeout_s) as sock:
        sock.sendall(first)
        sock.recv(1, socket.MSG_PEEK)  # the answer is here, unread
        for index in range(len(more)):
            sock.sendall(more[index : index + 1])
            time.sleep(0.005)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            return received, repr(exc)
        return received, "eof"


@pytest.mark.parametrize(
    ("first", "more", "status"),
    [
        (b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"a" * 40, 408),  # headers too slow
        (
            get("/health", *(f"X-Pad-{i}: {'a' * 4000}" for i in range(MAX_HEADER_BYTES // 4000 + 1)))[:-2],
            b"X: 1\r\n" * 8,
            431,
        ),
        (b"BROKEN\r\n\r\n", b"GET /health HTTP/1.1\r\n" * 2, 400),  # a malformed request, more pipelined
        (post(b'{"product_id": 1', length=200), b" " * 40, 408),  # a body too slow
    ],
    ids=["header-deadline", "header-size", "malformed", "body-deadline"],
)
def test_a_client_still_sending_when_the_gateway_closes_reads_the_answer_and_a_clean_end(
    edge: Edge, first: bytes, more: bytes, status: int
) -> None:
    before = edge.snapshot()
    received, ending = send_past_the_answer(edge.address, first, more, timeout_s=HEADER_TIMEOUT_S + LATE_S)
    assert ending == "eof", (ending, received)
    [response] = parse_responses(received)
    assert response.status == status, response
    edge.assert_nothing_stored(before)


def test_a_lingering_connection_is_closed_after_lingering_close_s(edge: Edge) -> None:
    """A client that keeps sending after the answer and never closes is cut off LINGERING_CLOSE_S later."""
    with socket.create_connection(edge.address, timeout=LATE_S) as sock:
        sock.sendall(b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sock.recv(1, socket.MSG_PEEK)
        answered = time.monotonic()
        cut_off = None
        while cut_off is None and time.monotonic() - answered < LINGERING_CLOSE_S + LATE_S:
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):  # the server's close reset the connection
                cut_off = time.monotonic() - answered
            time.sleep(0.05)
        assert cut_off is not None
        assert cut_off >= LINGERING_CLOSE_S - EARLY_S


def test_stalled_headers_are_a_408(edge: Edge) -> None:
    result = exchange(edge.address, [b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Ty"], timeout_s=LATE_S)
    assert result.closed
    assert result.elapsed_s >= HEADER_TIMEOUT_S - EARLY_S
    assert result.final.status == 408, result
    assert result.final.errors() == ["The request headers were not received in time"]


def test_headers_larger_than_max_header_bytes_are_a_431(edge: Edge) -> None:
    """Headers under aiohttp's per-line limit but larger in total than MAX_HEADER_BYTES, across segments."""
    lines = [f"X-Pad-{i}: {'a' * 4000}\r\n".encode() for i in range(2 * MAX_HEADER_BYTES // 4000)]
    parts = [b"GET /health HTTP/1.1\r\nHost: x\r\n", *lines]
    connection = Connection(edge.address, timeout_s=LATE_S)
    for part in parts:
        try:
            connection.send(part)
        except (BrokenPipeError, ConnectionResetError):
            break
        if connection.wait_for(b"\r\n\r\n", timeout_s=0.05):
            break
    result = connection.finish()
    assert result.closed
    assert result.final.status == 431, result
    assert result.final.errors() == [f"Request headers are larger than {MAX_HEADER_BYTES} bytes"]


@pytest.mark.parametrize("first", [b"", post(BID)], ids=["new", "after-a-request"])
def test_idle_connection_is_closed_after_the_keepalive_timeout(edge: Edge, first: bytes) -> None:
    """An idle connection gets no answer (a 408 to a client that asked nothing confuses clients), just EOF."""
    result = exchange(edge.address, [first], timeout_s=KEEPALIVE_TIMEOUT_S + LATE_S)
    assert result.closed
    assert result.elapsed_s >= KEEPALIVE_TIMEOUT_S - EARLY_S
    assert [response.status for response in result.responses] == ([200] if first else [])


def rounds_of_slow_connections(edge: Edge, kind: str, rounds: int, count: int) -> list[tuple[int, int]]:
    """(peak, after) RSS of the gateway in KiB, per round of `count` connections stuck in headers or body."""
    request = post(BID, "X-Pad: " + "a" * 6000) if kind == "headers" else post(b" " * 12_000, length=15_000)

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(*edge.address)
        writer.write(request[:-2] if kind == "headers" else request)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), timeout=LATE_S + 5)
        finally:
            writer.close()

    async def run() -> list[tuple[int, int]]:
        measured = []
        for _ in range(rounds):
            tasks = [asyncio.ensure_future(one()) for _ in range(count)]
            peak = edge.rss_kb()
            while not all(task.done() for task in tasks):
                await asyncio.sleep(0.1)
                peak = max(peak, edge.rss_kb())
            answers = [task.result() for task in tasks]
            assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:20] for a in answers}
            measured.append((peak, edge.rss_kb()))
        return measured

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["headers", "body"])
def test_gateway_memory_does_not_grow_with_slow_connections(edge: Edge, kind: str) -> None:
    """500 connections held in their headers (or body) at once, three times: memory returns after each round."""
    baseline = edge.rss_kb()
    measured = rounds_of_slow_connections(edge, kind, rounds=3, count=500)
    print(f"gateway RSS KiB, {kind}: before {baseline}, (peak, after) per round {measured}")
    first_peak = measured[0][0]
    # Bounded while they are open: well under 64 KiB per connection (a 12 KB body or 6 KB of headers each).
    assert first_peak - baseline < 500 * 64, measured
    # And nothing kept once they are closed: the later rounds need no more memory than the first (a leak of a
    # body per connection would add ~6 MiB a round). What the allocator keeps from a round is reused.
    assert all(peak - first_peak < 4 * 1024 for peak, _ in measured[1:]), measured
    assert all(after - first_peak < 4 * 1024 for _, after in measured), measured


# --- half-closed clients ---------------------------------------------------------------------------------


def test_half_closed_client_gets_its_answer_and_the_bid_is_stored(edge: Edge) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [post(bid_body(4201))], half_close=True)
    assert result.closed
    response = result.final
    assert response.status == 200, result
    assert response.headers["connection"] == "close"
    bid_id = response.json()["bid_id"]
    assert edge.rows_since(before) == [(bid_id, 4201, response.headers["x-request-id"])]


def test_half_closed_client_with_pipelined_requests_gets_every_answer_in_order(edge: Edge) -> None:
    before = edge.snapshot()
    bodies = [bid_body(4300 + i, current_cpc=i + 1, target_roas=100) for i in range(4)]
    result = exchange(edge.address, [b"".join(post(body) for body in bodies)], half_close=True)
    assert result.closed
    assert [r.status for r in result.responses] == [200] * 4, result
    assert [r.json()["adjusted_cpc"] for r in result.responses] == [1.0, 2.0, 3.0, 4.0]
    assert [r.headers.get("connection") for r in result.responses] == [None, None, None, "close"]
    rows = {bid_id: product for bid_id, product, _ in edge.rows_since(before)}
    assert rows == {r.json()["bid_id"]: 4300 + i for i, r in enumerate(result.responses)}


def test_half_close_before_the_end_of_the_body_is_a_400_and_stores_nothing(edge: Edge) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [post(BID[:20], length=len(BID))], half_close=True)
    assert result.closed
    assert result.final.status == 400, result
    assert result.final.errors() == ["The connection was closed before the end of the request body"]
    edge.assert_nothing_stored(before)


def test_half_close_inside_the_headers_closes_without_an_answer(edge: Edge) -> None:
    before = edge.snapshot()
    result = exchange(edge.address, [post(BID)[:40]], half_close=True, timeout_s=LATE_S)
    assert result.closed
    assert result.elapsed_s < HEADER_TIMEOUT_S + LATE_S
    assert result.responses == []
    edge.assert_nothing_stored(before)


def test_client_that_vanishes_after_sending_finds_its_bid_by_retrying_with_its_key(edge: Edge) -> None:
    """The documented exception: a client gone (reset) after its request was accepted may have a stored bid
    it never heard of; its retry with the same Idempotency-Key returns that bid and stores nothing new."""
    before = edge.snapshot()
    request = post(bid_body(4400), "Idempotency-Key: vanishing-client-1")
    connection = Connection(edge.address)
    connection.send(request)
    connection.reset()
    retry = exchange(edge.address, [post(bid_body(4400), "Idempotency-Key: vanishing-client-1", "Connection: close")])
    response = retry.final
    assert response.status == 200, retry
    rows = edge.rows_since(before)
    assert rows == [(response.json()["bid_id"], 4400, response.headers["x-request-id"])]


# --- pipelining ------------------------------------------------------------------------------------------


def test_pipelined_requests_in_one_segment_are_answered_in_order(edge: Edge) -> None:
    before = edge.snapshot()
    requests = [
        post(bid_body(4500, current_cpc=1, target_roas=100)),
        get("/health"),
        post(b'{"product_id": "abc", "current_cpc": 1, "target_roas": 100}'),  # a 400 in the middle
        post(gzip.compress(bid_body(4501, current_cpc=2, target_roas=100)), "Content-Encoding: gzip"),
        get("/nope"),
        post(bid_body(4502, current_cpc=3, target_roas=100)),
    ]
    connection = Connection(edge.address)
    connection.send(b"".join(requests))  # one write: one segment on loopback
    responses = connection.read_responses(len(requests))
    connection.sock.close()
    assert [r.status for r in responses] == [200, 200, 400, 200, 404, 200], responses
    assert responses[1].json() == {"status": "ok"}
    assert responses[2].errors() == ["Invalid product ID"]
    answered = [(r.json()["bid_id"], r.json()["adjusted_cpc"]) for r in (responses[0], responses[3], responses[5])]
    assert [cpc for _, cpc in answered] == [1.0, 2.0, 3.0]
    rows = [(bid_id, product) for bid_id, product, _ in edge.rows_since(before)]
    assert sorted(rows) == sorted(zip([b for b, _ in answered], [4500, 4501, 4502], strict=True))


# --- JSON errors -----------------------------------------------------------------------------------------


def test_unknown_path_is_a_json_404(edge: Edge) -> None:
    assert assert_error(edge, get("/nope"), 404) == ["Not found: GET /nope"]
    assert assert_error(edge, post(BID, path="/api/bids/"), 404) == ["Not found: POST /api/bids/"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_a_json_405_with_allow(edge: Edge, method: str) -> None:
    before = edge.snapshot()
    request = f"{method} /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BID)}\r\n\r\n".encode() + BID
    response = request_once(edge.address, request)
    assert response.status == 405, response
    assert response.headers["allow"] == "POST"
    assert response.errors() == [f"Method {method} is not allowed on /api/bid/ (allowed: POST)"]
    edge.assert_nothing_stored(before)


def test_expect_other_than_100_continue_is_a_json_417(edge: Edge) -> None:
    errors = assert_error(edge, post(BID, "Expect: the-unexpected"), 417)
    assert errors == ["Expect: 'the-unexpected' is not supported (only 100-continue is)"]
    assert assert_error(edge, get("/nope", "Expect: x"), 417)


def test_expect_100_continue_is_refused_from_the_headers_when_the_body_is_too_large(edge: Edge) -> None:
    """The client is told 413 before it sends its body: no 100 Continue."""
    before = edge.snapshot()
    connection = Connection(edge.address, timeout_s=LATE_S)
    connection.send(post(b"", "Expect: 100-continue", length=MAX_BODY_BYTES + 1))
    result = connection.finish()
    assert [r.status for r in result.responses] == [413], result
    edge.assert_nothing_stored(before)


def test_expect_100_continue_then_the_body_is_a_bid(edge: Edge) -> None:
    connection = Connection(edge.address)
    connection.send(post(b"", "Expect: 100-continue", "Connection: close", length=len(BID)))
    assert connection.wait_for(b"HTTP/1.1 100 Continue\r\n\r\n")
    connection.send(BID)
    result = connection.finish()
    assert [r.status for r in result.responses] == [100, 200], result


PARSER_ERRORS = {
    "bad-content-length": (b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
    "two-content-lengths": (
        b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "Content-Length",
    ),
    "content-length-and-chunked": (
        b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding",
    ),
    "unknown-transfer-encoding": (
        b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n",
        "Transfer-Encoding",
    ),
    "garbage-request-line": (b"GARBAGE\r\n\r\n", "method"),
    "bad-version": (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", "status line"),
    "header-line-too-long": (b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "8190"),
    "too-many-headers": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(130)) + b"\r\n",
        "headers",
    ),
    "nul-in-header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "header"),
    "missing-host": (b"GET /health HTTP/1.1\r\n\r\n", "Host"),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "PRI"),
}


@pytest.mark.parametrize(("request_bytes", "mentions"), PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
def test_parser_errors_are_json_400s_and_close(edge: Edge, request_bytes: bytes, mentions: str) -> None:
    """Refused by aiohttp's parser before the application runs; answered as JSON, HTTP/1.0, then closed."""
    before = edge.snapshot()
    result = exchange(edge.address, [request_bytes], timeout_s=5)
    assert result.closed, result
    response = result.final
    assert (response.version, response.status) == ("HTTP/1.0", 400), result
    (error,) = response.errors()
    assert error.startswith("Bad request: "), error
    assert mentions.lower() in error.lower(), error
    edge.assert_nothing_stored(before)


def test_no_answer_is_text(edge: Edge) -> None:
    """A sample of everything above on one connection each: no text/plain body anywhere."""
    samples = [get("/nope"), post(BID, "Content-Encoding: br"), post(b"{", "Content-Encoding: gzip"), b"X\r\n\r\n"]
    for request in samples:
        response = request_once(edge.address, request)
        assert response.headers["content-type"].startswith("application/json"), response


# --- the connection cap ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(another_gateway: Callable[..., Edge]) -> Edge:
    return another_gateway(MAX_CONNECTIONS="8")


def test_connections_past_max_connections_are_answered_503_and_closed(capped: Edge) -> None:
    held = [Connection(capped.address) for _ in range(8)]
    for connection in held:  # each answered once: every one is registered by the gateway
        connection.send(get("/health"))
        assert connection.read_responses(1)[0].status == 200
    before = capped.snapshot()
    refused = exchange(capped.address, [post(BID)], timeout_s=5)
    assert refused.closed
    response = refused.final
    assert response.status == 503, refused
    assert int(response.headers["retry-after"]) >= 1
    assert response.errors() == ["Service unavailable: too many connections to this gateway"]
    capped.assert_nothing_stored(before)

    for connection in held[:2]:
        connection.sock.close()

    def served() -> bool:
        time.sleep(0.1)  # the gateway sees the closes asynchronously
        return exchange(capped.address, [post(BID, "Connection: close")], timeout_s=5).final.status == 200

    assert any(served() for _ in range(100)), "a freed slot was never reused"
    for connection in held[2:]:
        connection.sock.close()
