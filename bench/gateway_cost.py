"""Benchmark: instructions per bid of the gateway's own work, for comparing two versions of it.

    python -m bench.gateway_cost [--requests 1000] [--against REV]
    python -m bench.gateway_cost --metrics 2       # what the metrics cost: METRICS_ENABLED on vs off, 2 rounds

Serves the real gateway application (`ingest.app.create_app`, through `ingest.edge`, uvloop) in one process
with a client in the same process sending `POST /api/bid/` over one connection, one request after the other.
Redis is left out: the publisher is replaced by one that answers each bid at once, as the pricing agent's
reply would (`BidReply` with an id and a price), so what is counted is the gateway's HTTP, validation,
event building and answer, which is what the gateway's hot-path changes change. Each version is run under
valgrind's callgrind for two request counts; the difference in instructions divided by the difference in
requests is the cost of one request with start-up cancelled out (client included, the same for both).

METRICS_ENABLED=false in the environment counts the gateway without its metrics (`--metrics` compares both; each
run also checks the requests were counted, or not, where production counts them). `--against REV` runs the same
for the code of revision REV (`git archive`), and prints the ratio. A loaded
machine does not move instruction counts, which is why changes are judged with them here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
REQUEST = (
    b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


def serve_and_send(requests: int) -> None:
    """The measured process: the gateway app with an answering publisher, and `requests` bids sent to it."""
    import uvloop
    from aiohttp import web

    from bidengine.embedded import free_port
    from ingest import app as gateway_app
    from ingest.edge import edge_runner
    from schema.events import BidReply
    from schema.settings import Settings

    class AnsweringPublisher:
        """Stands for Redis and the pricing agent: every published bid is answered on the next loop turn."""

        def __init__(self, gateway: Any) -> None:
            self.gateway = gateway
            self.bid_id = 0

        def publish(self, fields: dict[str, str], waiter: asyncio.Future[Any]) -> None:
            self.bid_id += 1
            reply = BidReply(fields["reply_id"], self.bid_id, "2.25")
            asyncio.get_running_loop().call_soon(self.gateway.replies._deliver, {reply.reply_id: reply.encode()})

    async def run() -> None:
        port = free_port()
        # From the environment (METRICS_ENABLED=false counts the gateway without its instrumentation).
        settings = dataclasses.replace(
            Settings.from_env(), gateway_port=port, redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x/x"
        )
        app: web.Application = gateway_app.create_app(settings, None, "postgresql://x/x")  # type: ignore[arg-type]
        gateway = app[gateway_app.GATEWAY]
        gateway.publisher = AnsweringPublisher(gateway)  # type: ignore[assignment]
        gateway.backends.status = type(gateway.backends.status)(
            redis=True, postgres=True, pricing_lag=0, pricing_consumers=1
        )
        app.cleanup_ctx.clear()  # no Redis: the reply reader and the backend checks are not started
        runner = edge_runner(app, settings)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200"), head + body
        writer.close()
        await runner.cleanup()
        # Counted where production counts them (the edge's access log, the reply router), or not at all.
        counted = gateway.metrics.registry.get_sample_value(
            "bidengine_http_requests_total", {"route": "/api/bid/", "method": "POST", "status": "200"}
        )
        waits = gateway.metrics.registry.get_sample_value("bidengine_gateway_reply_wait_seconds_count")
        expected = (requests, requests) if settings.metrics_enabled else (None, 0)
        assert (counted, waits) == expected, (counted, waits)

    uvloop.install()
    asyncio.run(run())


def count(code: Path, requests: int, **environment: str) -> int:
    # The code under test comes first on sys.path (PYTHONPATH); this script runs from its own directory. A fixed
    # hash seed gives the same dict layouts in every run.
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONHASHSEED": "0", **environment}
    output = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--in-process", str(requests)],
        cwd=code, env=env, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    collected = re.search(r"Collected : (\d+)", output)
    assert collected, output
    return int(collected.group(1))


def per_request(code: Path, requests: int, **environment: str) -> float:
    return (count(code, 2 * requests, **environment) - count(code, requests, **environment)) / requests


def metrics_cost(requests: int, rounds: int) -> None:
    """This tree with METRICS_ENABLED on and off, alternating: what the gateway's metrics cost a request."""
    counts: dict[str, list[float]] = {"true": [], "false": []}
    for _ in range(rounds):
        for enabled in ("false", "true"):
            counts[enabled].append(per_request(ROOT, requests, METRICS_ENABLED=enabled))
            print(f"METRICS_ENABLED={enabled:<5} {counts[enabled][-1]:>9,.0f} instructions per bid", flush=True)
    on, off = (sorted(counts[v])[len(counts[v]) // 2] for v in ("true", "false"))
    print(f"median of {rounds}: on - off = {on - off:,.0f} instructions per bid; on / off = {on / off:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--against", metavar="REV", help="also count the code of git revision REV")
    parser.add_argument(
        "--metrics", type=int, metavar="ROUNDS", help="count this tree with METRICS_ENABLED on and off instead"
    )
    parser.add_argument("--in-process", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        serve_and_send(args.in_process)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required: apt-get install -y valgrind")
    if args.metrics:
        metrics_cost(args.requests, args.metrics)
        return 0
    current = per_request(ROOT, args.requests)
    print(f"this tree: {current:,.0f} instructions per bid (client and gateway)", flush=True)
    if args.against:
        from bench.support import code_at

        with code_at(args.against) as other:
            theirs = per_request(other, args.requests)
        print(
            f"{args.against}: {theirs:,.0f} instructions per bid; this tree / {args.against} = {current / theirs:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
