"""What the metrics cost a bid at the gateway: instructions per request with METRICS_ENABLED on and off.

    python -m bench.metrics_cost                         # instructions per request, under valgrind (repeatable)
    python -m bench.metrics_cost --in-process on --requests 1000   # one variant, without valgrind

What the gateway records per request is all at its HTTP edge and in its reply routing: the request's count and
duration (`ingest.edge.EdgeProtocol.log_access`, once the answer is written) and the reply's wait (the reply
router). This serves a bid handler through the real edge (`ingest.edge.edge_runner`) with the gateway's metrics
(`ingest.metrics.GatewayMetrics`, on or off as METRICS_ENABLED makes them), the handler parsing the body as the
gateway does and observing a reply wait as the reply router does; one client connection in the same process
sends bids one after another. Nothing else runs: no timer, no Redis, so the count does not depend on how long a
run takes (a run under valgrind is slow, and the gateway's periodic tasks would add their instructions by the
second, not by the request).

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
from bisect import bisect_left
from pathlib import Path

from aiohttp import web

from bench.edge import REQUEST, edge_handler
from bidengine.embedded import free_port
from ingest.metrics import GATEWAY_METRICS, GatewayMetrics
from schema.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FEW, MANY = 100, 600  # requests of the short run, and how many more the long one sends


def in_process(variant: str, requests: int) -> None:
    import uvloop

    from ingest.edge import edge_runner

    metrics = GatewayMetrics(enabled=variant == "on")
    reply_wait = metrics.reply_wait if metrics.enabled else None

    async def handler(request: web.Request) -> web.Response:
        response = await edge_handler(request)
        if reply_wait is not None:  # what the reply router does for each reply (ingest/replies.py)
            reply_wait.counts[bisect_left(reply_wait.bounds, 0.004)] += 1
            reply_wait.sum += 0.004
        return response

    async def run() -> None:
        port = free_port()
        settings = Settings(gateway_port=port, metrics_enabled=metrics.enabled)
        app = web.Application(client_max_size=settings.max_body_bytes)
        app.router.add_post("/api/bid/", handler)
        app[GATEWAY_METRICS] = metrics
        runner = edge_runner(app, settings)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):
            writer.write(REQUEST)
            await reader.readuntil(b'"bid_id": 1}')
        writer.close()
        await runner.cleanup()
        counted = metrics.registry.get_sample_value(
            "bidengine_http_requests_total", {"route": "/api/bid/", "method": "POST", "status": "200"}
        )
        assert counted == (requests if metrics.enabled else None), counted

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
