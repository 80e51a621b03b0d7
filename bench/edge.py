"""Benchmark: the gateway's HTTP edge against aiohttp's stock server, CPU per request, in the same run.

    python -m bench.edge [--duration 10] [--rounds 3] [--connections 50]
    python -m bench.edge --instructions      # the same comparison in instructions, under valgrind

Both variants run in a process of their own with uvloop, as the gateway does, and serve `POST /api/bid/`
with the bid handler's body path (headers checked, body read, validated; no Redis): the stock variant as the
gateway did before the edge (`request.read()`, aiohttp's `AppRunner`), the edge variant as it does now
(`ingest.edge` runner and protocol, `ingest.body.read_body`, JSON errors). wrk drives each in turn, rounds
alternating. The figure is the server's CPU time per request (utime + stime from /proc), which other load on
a shared machine inflates far less than requests per second; both are printed, with the ratio.

It also holds 500 connections in their body for a round and prints the edge process's RSS before, at the
peak and after (the stock server would hold them forever).

On a shared machine both figures move by tens of percent from run to run. `--instructions` counts what does
not: the instructions one request costs (client and server in one process, one connection, requests one after
the other), each variant run under valgrind for two request counts, the difference divided by the difference
in requests (start-up cancels out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from bidengine.embedded import free_port
from ingest.body import BodyError, read_body
from ingest.validation import BidValidationError, parse_bid
from schema.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
"""


async def stock_handler(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return web.json_response({"errors": ["Content-Type must be application/json"]}, status=415)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"errors": ["too large"]}, status=413)
    try:
        bid = parse_bid(body)
    except BidValidationError as exc:
        return web.json_response({"errors": exc.errors}, status=400)
    return web.json_response({"adjusted_cpc": bid.current_cpc, "bid_id": 1})


async def edge_handler(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return web.json_response({"errors": ["Content-Type must be application/json"]}, status=415)
    declared = request.content_length
    if declared is not None and declared > 16 * 1024:
        return web.json_response({"errors": ["too large"]}, status=413)
    try:
        body = await read_body(request, 16 * 1024)
    except BodyError as exc:
        return web.json_response({"errors": [exc.message]}, status=exc.status)
    try:
        bid = parse_bid(body)
    except BidValidationError as exc:
        return web.json_response({"errors": exc.errors}, status=400)
    if request.transport is None:
        return web.json_response({"errors": ["gone"]}, status=400)
    return web.json_response({"adjusted_cpc": bid.current_cpc, "bid_id": 1})


def serve(variant: str, port: int) -> None:
    import uvloop

    from ingest.edge import serve as edge_serve

    settings = Settings(gateway_port=port, body_timeout_s=2.0, header_timeout_s=2.0)
    app = web.Application(client_max_size=settings.max_body_bytes)
    app.router.add_post("/api/bid/", edge_handler if variant == "edge" else stock_handler)
    app.router.add_get("/health", health)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if variant == "edge":
        edge_serve(app, settings)
    else:
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own local server
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def run_wrk(url: str, duration: int, connections: int, script: str) -> int:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    assert done, output
    assert non_2xx is None, output
    return int(done.group(1))


async def hold_bodies(port: int, count: int) -> None:
    """`count` connections that send headers and half a body, until the edge answers 408 and closes them."""

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15000\r\n\r\n"
        writer.write(head + b" " * 12_000)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), timeout=30)
        finally:
            writer.close()

    answers = await asyncio.gather(*(one() for _ in range(count)))
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)


REQUEST = (
    b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    + b'{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'.ljust(64)
)


def in_process(variant: str, requests: int) -> None:
    """Serve `variant` and send it `requests` bids one after the other over one connection, in this process."""
    import uvloop

    from ingest.edge import edge_runner

    async def run() -> None:
        port = free_port()
        settings = Settings(gateway_port=port)
        app = web.Application(client_max_size=settings.max_body_bytes)
        app.router.add_post("/api/bid/", edge_handler if variant == "edge" else stock_handler)
        runner = edge_runner(app, settings) if variant == "edge" else web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):
            writer.write(REQUEST)
            await reader.readuntil(b'"bid_id": 1}')
        writer.close()
        await runner.cleanup()

    uvloop.install()
    asyncio.run(run())


def count_instructions(variant: str, requests: int) -> int:
    output = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.edge",
         "--in-process", variant, "--requests", str(requests)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    collected = re.search(r"Collected : (\d+)", output)
    assert collected, output
    return int(collected.group(1))


def instructions() -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required: apt-get install -y valgrind")
    per_request = {}
    for variant in ("stock", "edge"):
        few, many = count_instructions(variant, 200), count_instructions(variant, 1200)
        per_request[variant] = (many - few) / 1000
        print(f"{variant:<5} {per_request[variant]:>9,.0f} instructions per request (client and server)", flush=True)
    print(f"edge - stock = {per_request['edge'] - per_request['stock']:,.0f} instructions per request; "
          f"edge / stock = {per_request['edge'] / per_request['stock']:.3f}")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run (bounded)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument("--serve", choices=["stock", "edge"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--in-process", choices=["stock", "edge"], help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.in_process:
        in_process(args.in_process, args.requests)
        return 0
    if args.instructions:
        return instructions()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    totals: dict[str, list[tuple[int, float, float]]] = {"stock": [], "edge": []}
    for round_number in range(1, args.rounds + 1):
        for variant in ("stock", "edge"):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.edge", "--serve", variant, "--port", str(port)], cwd=ROOT
            )
            try:
                wait_ready(f"http://127.0.0.1:{port}/health")
                before = cpu_seconds(server.pid)
                started = time.monotonic()
                requests = run_wrk(f"http://127.0.0.1:{port}/api/bid/", args.duration, args.connections, script.name)
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(server.pid) - before
                totals[variant].append((requests, cpu, elapsed))
                print(
                    f"round {round_number} {variant:<5} {requests / elapsed:>8,.0f} req/s  "
                    f"{cpu / requests * 1e6:6.1f} us CPU/request",
                    flush=True,
                )
                if variant == "edge" and round_number == args.rounds:
                    idle = rss_kib(server.pid)
                    holding = asyncio.run(_peak_while(server.pid, hold_bodies(port, 500)))
                    time.sleep(0.5)
                    print(
                        f"edge RSS KiB with 500 connections held in their body: before {idle}, peak {holding}, "
                        f"after {rss_kib(server.pid)}"
                    )
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    per_request = {
        variant: sum(cpu for _, cpu, _ in runs) / sum(requests for requests, _, _ in runs) * 1e6
        for variant, runs in totals.items()
    }
    print(
        f"CPU per request: stock {per_request['stock']:.1f} us, edge {per_request['edge']:.1f} us; "
        f"edge / stock = {per_request['edge'] / per_request['stock']:.3f}"
    )
    return 0


async def _peak_while(pid: int, work: Coroutine[Any, Any, None]) -> int:
    task = asyncio.ensure_future(work)
    peak = rss_kib(pid)
    while not task.done():
        await asyncio.sleep(0.05)
        peak = max(peak, rss_kib(pid))
    await task
    return peak


if __name__ == "__main__":
    sys.exit(main())
