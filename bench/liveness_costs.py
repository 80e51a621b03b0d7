"""What telling the truth about liveness costs, against a real redis-server of its own (docs/deploy.md).

`python -m bench.liveness_costs [--calls 5000]` prints, per call and against a PING measured in the same run:
the agents' presence announcement (once a second per agent), the gateway's count of live pricing agents (once a
second per gateway), and the XINFO CONSUMERS it replaces; and the memory of a presence set and of dead letters.
Figures, never assertions; bounded (a fixed number of calls).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis_streams.client import connect
from redis_streams.groups import _ANNOUNCE, live_consumers
from schema import keys
from schema.events import BidRequested, DeadLetter
from schema.settings import Settings
from tests.servers import RedisServer


async def timed(calls: int, operation: Callable[[], Awaitable[Any]]) -> float:
    """Median microseconds per call, one call at a time (what a once-a-second loop pays)."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await operation()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def main(calls: int) -> None:
    server = RedisServer()
    server.start()
    redis = connect(server.url(), Settings())
    try:
        presence = keys.consumers_key(keys.PRICING_GROUP)
        announce = redis.register_script(_ANNOUNCE)
        await redis.xgroup_create(keys.BID_REQUESTS, keys.PRICING_GROUP, id="0", mkstream=True)
        for n in range(4):  # four pricing agents
            await redis.xreadgroup(keys.PRICING_GROUP, f"pricing-agent-{n}", {keys.BID_REQUESTS: "0"})
            await announce(keys=[presence], args=[f"pricing-agent-{n}", 3_600_000])

        ping = await timed(calls, redis.ping)
        figures = {
            "announce (agent, 1/s)": await timed(
                calls, lambda: announce(keys=[presence], args=["pricing-agent-0", 3_600_000])
            ),
            "count live agents (gateway, 1/s)": await timed(
                calls, lambda: live_consumers(redis, presence, alive_ms=5000)
            ),
            "XINFO CONSUMERS (not used)": await timed(
                calls, lambda: redis.xinfo_consumers(keys.BID_REQUESTS, keys.PRICING_GROUP)
            ),
        }
        print(f"redis-server {(await redis.info('server'))['redis_version']}, {calls} calls each, median per call")
        print(f"  {'PING (baseline)':36} {ping:7.1f} us  1.00x")
        for name, micros in figures.items():
            print(f"  {name:36} {micros:7.1f} us  {micros / ping:.2f}x")

        presence_bytes = await redis.memory_usage(presence, samples=0)
        print(f"presence set of 4 agents: {presence_bytes} bytes")
        letter = DeadLetter(
            "1796111847032-4",
            keys.BID_REQUESTS,
            "PoisonedEntry: cannot handle 1796111847032-4",
            BidRequested(str(uuid.uuid4()), keys.reply_stream(uuid.uuid4().hex), "10482", 123, 1.5, 150.0).to_fields(),
            group=keys.PRICING_GROUP,
            deliveries=5,
        )
        for _ in range(1000):
            await redis.xadd(keys.BIDS_DEAD_LETTER, letter.to_fields())  # type: ignore[arg-type]
        dead_bytes = await redis.memory_usage(keys.BIDS_DEAD_LETTER, samples=0)
        print(f"bids:dead with 1,000 letters of a bid request: {(dead_bytes or 0) / 1000:.0f} bytes per letter")
    finally:
        await redis.aclose()
        server.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    asyncio.run(main(parser.parse_args().calls))
