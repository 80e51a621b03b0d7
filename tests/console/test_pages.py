"""Every page with data, its limits and links; headers; escaping of everything read from streams and bids."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis import asyncio as aioredis

from console.security import CONTENT_SECURITY_POLICY
from schema.keys import AUDIT_FLAGS, BIDS_DEAD_LETTER, COMPETITOR_PRICES_LIST

from . import seed
from .conftest import Console

PAGES = ("/", "/flags", "/reports", "/aggregates", "/bids", "/pipeline", "/competitors")


async def test_every_page_renders_with_data(operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool) -> None:
    seeded = await seed.seed_everything(redis, users_db)
    bid_id = seeded["bids"][1]["id"]
    for path in (*PAGES, f"/bids/{bid_id}", "/aggregates?product=101", "/flags?product=101", "/bids?product=101"):
        response = await operator.get(path)
        assert response.status == 200, (path, await response.text())
        assert "<h1>" in await response.text()


async def test_home_answers_on_the_first_screen(
    operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    await seed.seed_everything(redis, users_db)
    body = await (await operator.get("/")).text()
    for signal in (
        "pricing agents",
        "audit agents",
        "dead letters",
        "flags today",
        "last daily report",
        "last competitor poll",
        "last bid stored",
    ):
        assert signal in body, signal
    # One dead letter is waiting: the summary says BAD and links to it.
    row = re.search(r'<tr class="bad">.*?dead letters.*?</tr>', body, re.S)
    assert row, body
    assert 'href="/pipeline#dead-letters"' in row.group(0)


async def test_flags_link_to_their_bid_and_product(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    await seed.add_flag(redis, seed.flag_fields(42, 7, "10.00", "12.01", now))
    body = await (await operator.get("/flags")).text()
    assert 'href="/bids/42"' in body
    assert 'href="/bids?product=7"' in body
    assert 'href="/flags?product=7"' in body


async def test_flags_page_is_bounded_and_pages_by_entry_id(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    for i in range(45):
        await seed.add_flag(redis, seed.flag_fields(1000 + i, 5 + i % 2, "1.00", "2.00", now))
    size = operator.settings.console_page_size
    first = await (await operator.get("/flags")).text()
    ids = re.findall(r'href="/bids/(\d+)"', first)
    assert len(ids) == size
    assert ids[0] == "1044", "newest first"
    older = re.search(r'href="(/flags\?before=[0-9-]+)"', first)
    assert older
    second = await (await operator.get(older.group(1))).text()
    second_ids = re.findall(r'href="/bids/(\d+)"', second)
    assert second_ids[0] == str(1044 - size)
    assert not set(ids) & set(second_ids)


async def test_flag_product_filter_reads_a_bounded_number_of_flags(
    make_console: object, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    from .conftest import create_user

    console: Console = await make_console(console_flags_scan=30)  # type: ignore[operator]
    await create_user(users_db, "olivia", "operator")
    await console.login("olivia")
    now = datetime.now(UTC)
    await seed.add_flag(redis, seed.flag_fields(1, 99, "1.00", "2.00", now))  # oldest: beyond the scan
    for i in range(40):
        await seed.add_flag(redis, seed.flag_fields(100 + i, 5, "1.00", "2.00", now))
    body = await (await console.get("/flags?product=99")).text()
    assert 'href="/bids/1"' not in body
    assert "searched 30 flags" in body
    more = re.search(r'href="(/flags\?before=[0-9-]+&amp;product=99)"', body)
    assert more, "the page offers to search older flags"
    older = await (await console.get(more.group(1).replace("&amp;", "&"))).text()
    assert 'href="/bids/1"' in older


async def test_live_feed_returns_only_newer_flags(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    first = await seed.add_flag(redis, seed.flag_fields(1, 5, "1.00", "2.00", now))
    page = await (await operator.get("/flags")).text()
    assert f'data-last="{first}"' in page
    await seed.add_flag(redis, seed.flag_fields(2, 6, "1.00", "2.00", now))
    await seed.add_flag(redis, seed.flag_fields(3, 5, "1.00", "2.00", now))
    feed = await (await operator.get(f"/flags/feed?after={first}")).json()
    assert [f["bid_id"] for f in feed["flags"]] == [2, 3]
    only5 = await (await operator.get(f"/flags/feed?after={first}&product=5")).json()
    assert [f["bid_id"] for f in only5["flags"]] == [3]
    assert only5["last"] == feed["last"], "the cursor moves past flags of other products too"
    none = await (await operator.get(f"/flags/feed?after={feed['last']}")).json()
    assert none["flags"] == []


async def test_reports_today_and_past(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    old = await seed.add_report(redis, now - timedelta(days=2), 100, 7)
    new = await seed.add_report(redis, now, 200, 9)
    body = await (await operator.get("/reports")).text()
    today = body.split("<h2>All reports</h2>")[0]
    assert "bids flagged:  9" in today
    assert "bids flagged:  7" not in today
    assert f'href="/reports/{old}"' in body
    assert f'href="/reports/{new}"' in body
    detail = await (await operator.get(f"/reports/{old}")).text()
    assert "bids reviewed: 100" in detail
    assert (await operator.get("/reports/1-0")).status == 404
    assert (await operator.get("/reports/not-an-id")).status == 404


async def test_aggregates_overall_rolling_and_top_products(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    await seed.add_aggregates(redis, now, {7: (10, 4, 500), 8: (30, 1, 100)})
    await seed.add_aggregates(redis, now - timedelta(days=3), {7: (5, 5, 300), 9: (1, 0, 0)})
    await seed.add_aggregates(redis, now - timedelta(days=9), {7: (1000, 1000, 1)})  # outside the 7 days
    body = await (await operator.get("/aggregates")).text()
    cards = body.split("<table")[0]
    assert "5</p><p>flagged of 40 reviewed" in cards.replace("\n", ""), cards  # today
    assert "10</p><p>flagged of 46 reviewed" in cards.replace("\n", ""), cards  # rolling 7 days
    top = re.findall(r'<td><a href="/bids\?product=(\d+)"', body)
    assert top == ["7", "8", "9"], "most flagged first"
    one = await (await operator.get("/aggregates?product=9")).text()
    assert re.findall(r'<td><a href="/bids\?product=(\d+)"', one) == ["9"]


async def test_aggregates_rank_within_the_product_bound(
    make_console: object, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    from .conftest import create_user

    console: Console = await make_console(console_aggregates_max_products=10)  # type: ignore[operator]
    await create_user(users_db, "olivia", "operator")
    await console.login("olivia")
    now = datetime.now(UTC)
    await seed.add_aggregates(redis, now, {1: (1, 1, 1), 2: (1, 0, 1)})  # 6 counters: read
    await seed.add_aggregates(redis, now - timedelta(days=1), {p: (1, 1, 1) for p in range(3, 9)})  # 18: not
    body = await (await console.get("/aggregates")).text()
    assert "ranked over the most recent days only" in body
    assert re.findall(r'<td><a href="/bids\?product=(\d+)"', body) == ["1", "2"]


async def test_bid_detail_shows_its_flag_and_request_id(
    operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    row = await seed.insert_bid(users_db, 77, "10.00", "150", "15.00")
    other = await seed.insert_bid(users_db, 78, "10.00", "110", "11.00")
    await seed.add_flag(redis, seed.flag_fields(row["id"], 77, "10.00", "15.00", row["calculated_at"]))
    body = await (await operator.get(f"/bids/{row['id']}")).text()
    assert str(row["request_id"]) in body
    assert "audit:flags entry" in body
    plain = await (await operator.get(f"/bids/{other['id']}")).text()
    assert "Not flagged" in plain
    assert (await operator.get("/bids/999999")).status == 404
    assert (await operator.get("/bids/abc")).status == 404
    assert (await operator.get("/bids/99999999999999999999")).status == 404


async def test_find_a_bid_by_id_or_request_id(operator: Console, users_db: asyncpg.Pool) -> None:
    row = await seed.insert_bid(users_db, 77, "10.00", "150", "15.00")
    by_id = await operator.get(f"/bids?q=%23{row['id']}")
    assert by_id.headers["Location"] == f"/bids/{row['id']}"
    by_request = await operator.get(f"/bids?q={row['request_id']}")
    assert by_request.headers["Location"] == f"/bids/{row['id']}"
    unknown = await operator.get("/bids?q=00000000-0000-0000-0000-000000000000")
    assert unknown.status == 200
    assert "No bid has the request id" in await unknown.text()
    junk = await operator.get("/bids?q=drop table")
    assert "Search for a bid id" in await junk.text()


@pytest.mark.parametrize(
    "query", ["product=abc", "product=0", "from=yesterday", "to=2026-13-01T00:00", "from=2026-02-01&to=2026-01-01"]
)
async def test_bad_bid_search_input_is_explained(operator: Console, query: str) -> None:
    response = await operator.get(f"/bids?{query}")
    assert response.status == 200
    assert 'class="banner warn"' in await response.text()


async def test_competitors_latest_poll_and_changes(operator: Console, redis: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    await seed.add_polls(
        redis,
        [
            (now - timedelta(minutes=10), {1: 10.0, 2: 20.0, 3: 30.0}),
            (now - timedelta(minutes=5), {1: 10.0, 2: 25.0, 4: 40.0}),
        ],
    )
    await redis.rpush(COMPETITOR_PRICES_LIST, "not json")
    body = await (await operator.get("/competitors")).text()
    changed = body.split("<h2>Latest prices")[0]
    assert re.search(
        r"<td>2</td><td>Product 2</td><td class=\"num\">20.0</td><td class=\"num\">25.0</td>"
        r"<td class=\"num\">\+25.00%</td>",
        changed,
    ), changed
    assert '<td>4</td><td>Product 4</td><td class="num">new</td>' in changed
    assert '<td>3</td><td>Product 3</td><td class="num">30.0</td><td class="num">gone</td>' in changed
    assert "<td>1</td>" not in changed, "unchanged prices are not listed as changes"
    assert "1 elements of competitor_prices are not price records" in body


async def test_security_headers_on_every_response(operator: Console) -> None:
    for path in (*PAGES, "/login", "/static/console.css", "/nope", "/flags/feed"):
        response = await operator.get(path)
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["Referrer-Policy"] == "no-referrer", path
        if not path.startswith("/static/"):
            assert response.headers["Cache-Control"] == "no-store", path


async def test_no_inline_script_anywhere(operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool) -> None:
    """The CSP forbids inline code; the pages must not need any (every script is a /static file)."""
    await seed.seed_everything(redis, users_db)
    for path in (*PAGES, "/login"):
        body = await (await operator.get(path)).text()
        for tag in re.findall(r"<script\b[^>]*>", body):
            assert re.fullmatch(r'<script src="/static/[a-z]+\.js" defer>', tag), (path, tag)
        assert not re.search(r"\son[a-z]+=", body), f"{path}: inline event handler"
        assert "style=" not in body, f"{path}: inline style"


async def test_stream_and_bid_values_are_never_html(
    operator: Console, redis: aioredis.Redis, users_db: asyncpg.Pool
) -> None:
    hostile = seed.HOSTILE
    now = datetime.now(UTC)
    row = await seed.insert_bid(users_db, 5, "1.00", "150", "1.50")
    fields = {
        name: hostile
        for name in (
            "request_id",
            "current_cpc",
            "adjusted_cpc",
            "deviation",
            "deviation_pct",
            "calculated_at",
            "flagged_at",
        )
    }
    await seed.add_flag(redis, {**fields, "bid_id": str(row["id"]), "product_id": "5"})
    await seed.add_flag(redis, {**fields, "bid_id": hostile, "product_id": hostile})
    await redis.xadd("audit:reports", {"title": hostile, "generated_at": hostile, "reviewed": hostile, "text": hostile})
    await redis.xadd(BIDS_DEAD_LETTER, {"entry_id": hostile, "stream": hostile, "reason": hostile, "fields": hostile})
    await redis.lpush(
        COMPETITOR_PRICES_LIST,
        seed.price(1, 2.0, now, name=hostile),
    )
    await seed.add_polls(redis, [(now + timedelta(seconds=1), {1: 3.0})])
    letter_id = (await redis.xrevrange(BIDS_DEAD_LETTER, count=1))[0][0]
    report_id = (await redis.xrevrange("audit:reports", count=1))[0][0]
    flag_entry = (await redis.xrevrange(AUDIT_FLAGS, count=1))[0][0]
    assert flag_entry
    paths = (*PAGES, f"/bids/{row['id']}", f"/reports/{report_id}", f"/pipeline/dead/{BIDS_DEAD_LETTER}/{letter_id}")
    for path in paths:
        response = await operator.get(path)
        body = await response.text()
        assert "<script>alert" not in body, path
        assert response.status in (200, 503), path
    flags = await (await operator.get("/flags")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in flags
    feed = await (await operator.get("/flags/feed?after=0-0")).json()
    assert feed["flags"][0]["request_id"] == hostile, "JSON carries the text as is; the page sets it as text"
