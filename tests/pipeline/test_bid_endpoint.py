"""The bidder's contract, end to end: gateway -> bids:requests -> pricing agent -> PostgreSQL -> reply."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict

from schema import keys
from schema.database import BIDS_TABLE
from tests.pipeline.conftest import Pipeline


async def post(
    pipeline: Pipeline, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, CIMultiDict[str], Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{pipeline.gateway_url}/api/bid/",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.json(content_type=None)


async def stored(db: asyncpg.Pool, bid_id: int) -> asyncpg.Record:
    row = await db.fetchrow(f"SELECT * FROM {BIDS_TABLE} WHERE id = $1", bid_id)
    assert row is not None, f"bid {bid_id} answered 200 but has no row"
    return row


@pytest.mark.parametrize(
    ("current_cpc", "target_roas", "adjusted"),
    [(1.0, 150, 1.5), (1.50, 150.0, 2.25), (999.99, 500, 4999.95), (1.15, 150, 1.73), (2.675, 100, 2.68)],
)
async def test_legacy_cases_price_and_store(
    pipeline: Pipeline, db: asyncpg.Pool, current_cpc: float, target_roas: float, adjusted: float
) -> None:
    status, headers, body = await post(
        pipeline, {"product_id": 123, "current_cpc": current_cpc, "target_roas": target_roas}
    )
    assert status == 200, body
    assert set(body) == {"adjusted_cpc", "bid_id"}
    assert body["adjusted_cpc"] == adjusted
    row = await stored(db, body["bid_id"])
    assert row["product_id"] == 123
    assert row["adjusted_cpc"] == Decimal(str(adjusted))
    assert row["current_cpc"] == Decimal(str(current_cpc)).quantize(Decimal("0.01"))
    assert str(row["request_id"]) == headers["X-Request-Id"]


async def test_two_bids_for_the_same_product_are_both_stored(pipeline: Pipeline, db: asyncpg.Pool) -> None:
    bid = {"product_id": 77, "current_cpc": 1.5, "target_roas": 150}
    (s1, _, first), (s2, _, second) = await asyncio.gather(post(pipeline, bid), post(pipeline, bid))
    assert (s1, s2) == (200, 200)
    assert first["bid_id"] != second["bid_id"]
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = 77") == 2


async def test_many_concurrent_bids_each_have_their_row(pipeline: Pipeline, db: asyncpg.Pool) -> None:
    bids = [{"product_id": 1000 + i, "current_cpc": round(0.5 + i / 100, 2), "target_roas": 120} for i in range(300)]
    results = await asyncio.gather(*(post(pipeline, bid) for bid in bids))
    assert all(status == 200 for status, _, _ in results)
    ids = [body["bid_id"] for _, _, body in results]
    assert len(set(ids)) == 300
    rows = {r["id"]: r for r in await db.fetch(f"SELECT * FROM {BIDS_TABLE} WHERE id = ANY($1)", ids)}
    assert len(rows) == 300
    for bid, (_, _, body) in zip(bids, results, strict=True):
        assert rows[body["bid_id"]]["product_id"] == bid["product_id"]
        assert float(rows[body["bid_id"]]["adjusted_cpc"]) == body["adjusted_cpc"]


async def test_missing_field_is_a_400_with_errors(pipeline: Pipeline) -> None:
    status, _, body = await post(pipeline, {"product_id": 123, "current_cpc": 1.5})
    assert status == 400
    assert "Invalid target ROAS" in body["errors"]
    assert "Missing field: target_roas" in body["errors"]


async def test_idempotent_retry_returns_the_same_bid_and_stores_one_row(pipeline: Pipeline, db: asyncpg.Pool) -> None:
    bid = {"product_id": 55, "current_cpc": 2.0, "target_roas": 110}
    key = {"Idempotency-Key": "order-55-attempt"}
    results = [await post(pipeline, bid, headers=key) for _ in range(3)]
    results += await asyncio.gather(post(pipeline, bid, headers=key), post(pipeline, bid, headers=key))
    assert {status for status, _, _ in results} == {200}
    assert len({body["bid_id"] for _, _, body in results}) == 1
    assert {body["adjusted_cpc"] for _, _, body in results} == {2.2}
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = 55") == 1


async def test_idempotency_key_reused_for_another_bid_is_refused(pipeline: Pipeline, db: asyncpg.Pool) -> None:
    key = {"Idempotency-Key": "reused"}
    first = await post(pipeline, {"product_id": 56, "current_cpc": 2.0, "target_roas": 110}, headers=key)
    second = await post(pipeline, {"product_id": 56, "current_cpc": 3.0, "target_roas": 110}, headers=key)
    assert first[0] == 200
    assert second[0] == 422
    assert "Idempotency-Key" in second[2]["errors"][0]
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = 56") == 1


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "error"),
    [
        (b'{"product_id": 1', "application/json", 400, "Malformed JSON body"),
        (b"[1, 2, 3]", "application/json", 400, "Request body must be a JSON object"),
        (b'{"product_id": 1, "current_cpc": NaN, "target_roas": 1}', "application/json", 400, "Malformed JSON body"),
        (b'{"product_id": 1, "current_cpc": 1e400, "target_roas": 100}', "application/json", 400, "finite"),
        (b'{"product_id": 1.5, "current_cpc": 1, "target_roas": 100}', "application/json", 400, "whole number"),
        (b'{"product_id": 1, "current_cpc": 1e12, "target_roas": 100}', "application/json", 400, "too large"),
        (b'{"product_id": 1, "current_cpc": 1e9, "target_roas": 5000}', "application/json", 400, "too large"),
        (b'{"product_id": true, "current_cpc": "1", "target_roas": 1}', "application/json", 400, "Invalid product ID"),
        (b"\xff\xfe", "application/json", 400, "Malformed JSON body"),
        (b"product_id=1", "application/x-www-form-urlencoded", 415, "Content-Type"),
        (b"x" * 20_000, "application/json", 413, "larger than"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_never_reaches_the_stream(
    pipeline: Pipeline, raw: bytes, content_type: str, status: int, error: str
) -> None:
    redis = aioredis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    before = await redis.xinfo_stream(keys.BID_REQUESTS)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pipeline.gateway_url}/api/bid/", data=raw, headers={"Content-Type": content_type}) as response,
    ):
        assert response.status == status
        body = await response.json()
    assert any(error in message for message in body["errors"]), body
    after = await redis.xinfo_stream(keys.BID_REQUESTS)
    assert after["last-generated-id"] == before["last-generated-id"]
    await redis.aclose()


async def test_invalid_idempotency_key_is_refused(pipeline: Pipeline) -> None:
    status, _, body = await post(
        pipeline, {"product_id": 1, "current_cpc": 1, "target_roas": 100}, headers={"Idempotency-Key": "x" * 300}
    )
    assert status == 400
    assert "Idempotency-Key" in body["errors"][0]


async def test_health_and_ready(pipeline: Pipeline) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pipeline.gateway_url}/health") as response:
            assert response.status == 200
        # /ready reports a snapshot refreshed every second: wait for one taken after earlier tests' bids.
        for _ in range(50):
            async with session.get(f"{pipeline.gateway_url}/ready") as response:
                assert response.status == 200
                ready = await response.json()
            if ready["pricing_lag"] == 0:
                break
            await asyncio.sleep(0.1)
    assert ready["redis"] is True
    assert ready["postgres"] is True
    assert ready["pricing_lag"] == 0
    assert ready["in_flight"] == 0
