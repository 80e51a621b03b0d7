"""The comparison point for bench.pipeline: what the legacy service did, on a modern stack.

One asyncpg INSERT (one transaction, one fsync) per request, answered after the commit: the fastest
honest version of "one INSERT per request". aiohttp + uvloop, a pool of 20 connections.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import uvloop
from aiohttp import web

from legacy import calculate_adjusted_cpc
from schema.database import BIDS_TABLE
from schema.settings import Settings

INSERT = (
    f"INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id"
)
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool")


async def bid(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    cpc, roas = float(body["current_cpc"]), float(body["target_roas"])
    adjusted = calculate_adjusted_cpc(cpc, roas)
    bid_id = await request.app[POOL].fetchval(INSERT, uuid.uuid4(), int(body["product_id"]), cpc, roas, adjusted)
    return web.json_response({"adjusted_cpc": adjusted, "bid_id": bid_id})


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def pool_context(app: web.Application) -> AsyncIterator[None]:
    settings = Settings.from_env()
    assert settings.database_url
    app[POOL] = await asyncpg.create_pool(settings.database_url, min_size=20, max_size=20)
    yield
    await app[POOL].close()


def main() -> None:
    settings = Settings.from_env()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application()
    app.router.add_post("/api/bid/", bid)
    app.router.add_get("/ready", health)
    app.cleanup_ctx.append(pool_context)
    web.run_app(app, host="127.0.0.1", port=settings.gateway_port, access_log=None, print=None)


if __name__ == "__main__":
    main()
