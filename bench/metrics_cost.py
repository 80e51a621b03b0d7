"""What the metrics cost a bid at the gateway: instructions per request with METRICS_ENABLED on and off.

    python -m bench.metrics_cost                 # instructions per request, under valgrind (repeatable)
    python -m bench.metrics_cost --in-process on --requests 1000   # one variant, without valgrind

The real gateway (`ingest.app.create_app` served by `ingest.edge`) and a minimal pricing responder run in one
process, on an embedded Redis and the PostgreSQL of DATABASE_URL (the gateway only checks that it answers):
the responder reads `bids:requests` through the pricing group, announces itself as a live consumer and answers
every bid on the gateway's reply stream, so each request goes through the whole gateway hot path (edge,
handler, XADD, reply routing) and its metrics. One client connection sends the bids one after another.

Instructions are counted with callgrind for 200 and for 1,000 requests; the difference divided by 800 is the
cost of one request (start-up cancels out), client and responder included: the same for both variants, so the
difference between them is what the metrics cost. The whole pipeline's figure with the metrics on and off, in
the same run: `bench.pipeline` (docs/benchmarks.md).
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

from bidengine.embedded import embedded_redis, free_port
from schema import keys
from schema.events import BidReply, BidRequested, encode_replies
from schema.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FEW, MANY = 200, 800  # requests of the short run, and how many more the long one sends
BODY = b'{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
REQUEST = (
    b"POST /api/bid/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def respond(redis_url: str, stop: asyncio.Event) -> None:
    """A pricing agent reduced to its protocol: read, reply, acknowledge, announce."""
    from redis import asyncio as aioredis

    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.xgroup_create(keys.BID_REQUESTS, keys.PRICING_GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    presence = keys.consumers_key(keys.PRICING_GROUP)
    while not stop.is_set():
        seconds, micros = await redis.time()
        await redis.zadd(presence, {"bench": seconds * 1000 + micros // 1000})
        reply: Any = await redis.xreadgroup(keys.PRICING_GROUP, "bench", {keys.BID_REQUESTS: ">"}, count=100, block=100)
        for _, entries in reply.items() if isinstance(reply, dict) else reply or []:
            flat: list[tuple[str, dict[str, str]]] = entries[0] if entries and isinstance(entries[0], list) else entries
            async with redis.pipeline(transaction=False) as pipe:
                for entry_id, fields in flat:
                    bid = BidRequested.from_fields(fields)
                    answer: Any = encode_replies([BidReply(bid.reply_id, 1, "2.25")])
                    pipe.xadd(bid.reply_to, answer)
                    pipe.xack(keys.BID_REQUESTS, keys.PRICING_GROUP, str(entry_id))
                await pipe.execute()
    await redis.aclose()


async def run(variant: str, requests: int, redis_url: str, database_url: str) -> None:
    from aiohttp import web

    from ingest.app import GATEWAY, create_app
    from ingest.edge import edge_runner
    from redis_streams.client import connect

    port = free_port()
    settings = Settings(gateway_port=port, metrics_enabled=variant == "on")
    stop = asyncio.Event()
    responder = asyncio.create_task(respond(redis_url, stop))
    app = create_app(settings, connect(redis_url, settings, client_name="gateway"), database_url)
    runner = edge_runner(app, settings)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    backends = app[GATEWAY].backends
    # Checked by hand below, then never again: a check every second would add instructions by the wall-clock time
    # a run takes (under valgrind, minutes), not by the requests it serves.
    backends.interval_s = 3600.0
    while not backends.status.pricing_consumers:  # the responder has announced itself
        await asyncio.sleep(0.05)
        await backends.check()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(requests):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        await reader.readexactly(length)
    writer.close()
    stop.set()
    await responder
    await runner.cleanup()


def in_process(variant: str, requests: int) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(run(variant, requests, os.environ["BENCH_REDIS_URL"], os.environ["DATABASE_URL"]))


def count_instructions(variant: str, requests: int, env: dict[str, str]) -> int:
    output = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "bench.metrics_cost", "--in-process", variant, "--requests", str(requests)],
        cwd=ROOT, capture_output=True, text=True, check=True, env=env,
    ).stderr  # fmt: skip
    collected = re.search(r"Collected : (\d+)", output)
    assert collected, output
    return int(collected.group(1))


def instructions(rounds: int) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required: apt-get install -y valgrind")
    if not os.environ.get("DATABASE_URL"):
        raise SystemExit("DATABASE_URL is required (the gateway checks that PostgreSQL answers)")
    per_request: dict[str, list[float]] = {"on": [], "off": []}
    with embedded_redis() as redis_url:
        env = {**os.environ, "BENCH_REDIS_URL": redis_url, "LOG_LEVEL": "WARNING"}
        for _ in range(rounds):
            for variant in ("off", "on"):  # alternating: whatever the machine does affects both alike
                few, many = count_instructions(variant, FEW, env), count_instructions(variant, FEW + MANY, env)
                per_request[variant].append((many - few) / MANY)
                print(f"metrics {variant:<3} {per_request[variant][-1]:>10,.0f} instructions per request", flush=True)
    on, off = (sorted(per_request[v])[len(per_request[v]) // 2] for v in ("on", "off"))
    print(
        f"median over {rounds} rounds: on - off = {on - off:,.0f} instructions per request; on / off = {on / off:.4f}"
    )
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
