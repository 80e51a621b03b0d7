"""What the metrics cost a bid at the gateway: instructions per request with METRICS_ENABLED on and off.

    python -m bench.metrics_cost                         # instructions per request, under valgrind (repeatable)
    python -m bench.metrics_cost --in-process on --requests 1000   # one variant, without valgrind

What the gateway records per request is all at its HTTP edge and in its reply routing: the request's count and
duration (`ingest.edge.EdgeProtocol.log_access`, once the answer is written) and the reply's wait (the reply
router). This serves the real gateway application (`ingest.app.create_app` through `ingest.edge`, uvloop) with
METRICS_ENABLED on or off, as `bench.gateway_cost` does: Redis is left out, a publisher answers each bid through
the reply router on the next loop turn; one client connection in the same process sends bids one after another.
No Redis and no periodic task run, so the count does not depend on how long a run takes (under valgrind, long).

Instructions are counted with callgrind for 100 and for 700 requests; the difference divided by 600 is the
cost of one request, client included (the same in both variants: the difference is what the metrics cost).
Whole-pipeline throughput with the metrics on and off in the same run: `bench.pipeline` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from bidengine.embedded import free_port
from schema.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
REQUEST = (
    b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
FEW, MANY = 100, 600  # requests of the short run, and how many more the long one sends


def in_process(variant: str, requests: int) -> None:
    import uvloop

    from ingest import app as gateway_app
    from ingest.edge import edge_runner
    from schema.events import BidReply

    class AnsweringPublisher:
        """Stands for Redis and the pricing agent (as bench.gateway_cost does): every bid published is answered
        through the reply router on the next loop turn, so the reply's wait is recorded where it is in production."""

        def __init__(self, gateway: Any) -> None:
            self.gateway = gateway
            self.bid_id = 0

        def publish(self, fields: dict[str, str], waiter: asyncio.Future[Any]) -> None:
            self.bid_id += 1
            reply = BidReply(fields["reply_id"], self.bid_id, "2.25")
            asyncio.get_running_loop().call_soon(self.gateway.replies._deliver, {reply.reply_id: reply.encode()})

    async def run() -> None:
        port = free_port()
        settings = Settings(
            gateway_port=port,
            redis_url="redis://127.0.0.1:1/0",
            database_url="postgresql://x/x",
            metrics_enabled=variant == "on",
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
        metrics = gateway.metrics
        counted = metrics.registry.get_sample_value(
            "bidengine_http_requests_total", {"route": "/api/bid/", "method": "POST", "status": "200"}
        )
        waits = metrics.registry.get_sample_value("bidengine_gateway_reply_wait_seconds_count")
        assert (counted, waits) == ((requests, requests) if variant == "on" else (None, 0)), (counted, waits)

    uvloop.install()
    asyncio.run(run())


def count_instructions(variant: str, requests: int) -> int:
    output = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "bench.metrics_cost", "--in-process", variant, "--requests", str(requests)],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in every run
    ).stderr  # fmt: skip
    collected = re.search(r"Collected : (\d+)", output)
    assert collected, output
    return int(collected.group(1))


def instructions(rounds: int) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required: apt-get install -y valgrind")
    per_request: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for variant in ("off", "on"):  # alternating rounds
            few, many = count_instructions(variant, FEW), count_instructions(variant, FEW + MANY)
            per_request[variant].append((many - few) / MANY)
            print(f"metrics {variant:<3} {per_request[variant][-1]:>9,.0f} instructions per request", flush=True)
    on, off = (sorted(per_request[v])[len(per_request[v]) // 2] for v in ("on", "off"))
    print(f"median of {rounds}: on - off = {on - off:,.0f} instructions per request; on / off = {on / off:.4f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-process", choices=["on", "off"], help="run one variant in this process")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.in_process:
        in_process(args.in_process, args.requests)
        return 0
    return instructions(args.rounds)


if __name__ == "__main__":
    sys.exit(main())
