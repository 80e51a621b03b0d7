"""Polls against a real Redis: what reaches the list and the stream, and what never does."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from monitor.fake_api import Fault, RunningFakeApi, is_broken_by_bad_items
from monitor.health import PollOutcome
from schema.competitor import STREAM_RECORD_FIELD, CompetitorPrice
from schema.keys import COMPETITOR_PRICES_LIST, COMPETITOR_PRICES_STREAM
from tests.monitor.conftest import MonitorFactory


async def stored_ids(redis: aioredis.Redis) -> list[int]:
    return [json.loads(p)["productId"] for p in await redis.lrange(COMPETITOR_PRICES_LIST, 0, -1)]


async def streamed_records(redis: aioredis.Redis) -> list[CompetitorPrice]:
    records = []
    for _, fields in await redis.xrange(COMPETITOR_PRICES_STREAM) or []:
        assert fields is not None
        records.append(CompetitorPrice.from_json(fields[STREAM_RECORD_FIELD]))
    return records


async def test_a_poll_over_several_pages_publishes_every_product(
    make_monitor: MonitorFactory, redis: aioredis.Redis
) -> None:
    monitor = make_monitor(monitor_page_size=30)

    report = await monitor.poll_once()

    assert report.outcome is PollOutcome.OK
    assert (report.pages, report.items_fetched, report.items_rejected, report.items_published) == (7, 200, 0, 200)
    assert await stored_ids(redis) == list(range(1, 201))
    streamed = await streamed_records(redis)
    assert [r.productId for r in streamed] == list(range(1, 201))
    assert len({r.timestamp for r in streamed}) == 1  # one observation time per poll


async def test_existing_consumers_read_the_newest_records_as_before(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    monitor = make_monitor()
    await monitor.poll_once()
    fake_api.products[0]["price"] = 1.25
    await monitor.poll_once()

    # The exact read the existing Python consumers do.
    latest = [json.loads(p) for p in await redis.lrange("competitor_prices", 0, 9)]

    assert [r["productId"] for r in latest] == list(range(1, 11))
    assert latest[0]["price"] == 1.25
    for record in latest:
        CompetitorPrice.model_validate(record)
        assert record["source"] == "dummyjson"
    unbranded = next(p["id"] for p in fake_api.products if "brand" not in p)
    everything = [json.loads(p) for p in await redis.lrange("competitor_prices", 0, 199)]
    assert next(r for r in everything if r["productId"] == unbranded)["brand"] is None


async def test_the_list_stays_bounded_and_keeps_the_newest_poll(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    monitor = make_monitor(monitor_list_max=250)
    await monitor.poll_once()
    fake_api.products[0]["price"] = 0.5
    await monitor.poll_once()

    assert await redis.llen(COMPETITOR_PRICES_LIST) == 250
    ids = await stored_ids(redis)
    assert ids[:200] == list(range(1, 201))  # the whole second poll first
    assert ids[200:] == list(range(1, 51))  # then the head of the first one
    head = await redis.lindex(COMPETITOR_PRICES_LIST, 0)
    assert head is not None
    newest = json.loads(head)
    assert newest["price"] == 0.5


async def test_the_stream_keeps_every_poll_in_order_and_is_capped(
    make_monitor: MonitorFactory, redis: aioredis.Redis
) -> None:
    monitor = make_monitor(monitor_stream_maxlen=300)
    for _ in range(5):
        await monitor.poll_once()

    length = await redis.xlen(COMPETITOR_PRICES_STREAM)
    # `MAXLEN ~` trims whole nodes only, so it keeps at least the bound and somewhat more, never all 1000.
    assert 300 <= length < 1000
    streamed = await streamed_records(redis)
    stamps = [r.timestamp for r in streamed]
    assert stamps == sorted(stamps)
    assert [r.productId for r in streamed[-200:]] == list(range(1, 201))


async def test_bad_items_are_skipped_counted_and_never_stored(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    fake_api.faults.always = Fault.BAD_ITEMS
    broken_ids = {p["id"] for p in fake_api.products if is_broken_by_bad_items(p)}
    monitor = make_monitor()

    report = await monitor.poll_once()

    assert report.outcome is PollOutcome.OK
    assert (report.items_fetched, report.items_rejected, report.items_published) == (200, 20, 180)
    ids = await stored_ids(redis)
    assert len(ids) == 180
    assert not broken_ids & set(ids)
    assert await redis.xlen(COMPETITOR_PRICES_STREAM) == 180
    assert monitor.history.items_rejected == 20


async def test_a_poll_with_no_valid_item_publishes_nothing(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    fake_api.products[:] = [p for p in fake_api.products if is_broken_by_bad_items(p)]
    fake_api.faults.always = Fault.BAD_ITEMS
    monitor = make_monitor()

    report = await monitor.poll_once()

    assert report.outcome is PollOutcome.NO_VALID_ITEMS
    assert report.items_rejected == 20
    assert await redis.exists(COMPETITOR_PRICES_LIST, COMPETITOR_PRICES_STREAM) == 0


async def test_every_kind_of_bad_upstream_answer_leaves_redis_untouched(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    monitor = make_monitor(monitor_max_retries=1, monitor_timeout_s=0.2)
    errors: dict[Fault, str] = {}
    for fault in (Fault.HTML, Fault.SERVER_ERROR, Fault.NOT_FOUND, Fault.SLOW, Fault.TRUNCATED):
        fake_api.faults.always = fault

        report = await monitor.poll_once()

        assert report.outcome is PollOutcome.FETCH_FAILED, fault
        assert report.error
        errors[fault] = report.error
    assert await redis.exists(COMPETITOR_PRICES_LIST, COMPETITOR_PRICES_STREAM) == 0
    assert monitor.history.consecutive_failures == 5
    assert monitor.history.last_error == errors[Fault.TRUNCATED]


async def test_a_page_failing_mid_catalogue_publishes_nothing_of_that_poll(
    make_monitor: MonitorFactory, redis: aioredis.Redis, fake_api: RunningFakeApi
) -> None:
    monitor = make_monitor(monitor_max_retries=1)
    fake_api.faults.next.extend([None, None, Fault.SERVER_ERROR, Fault.SERVER_ERROR])

    failed = await monitor.poll_once()
    recovered = await monitor.poll_once()

    assert failed.outcome is PollOutcome.FETCH_FAILED
    assert (failed.pages, failed.requests) == (2, 4)  # two good pages, then the third one twice
    assert recovered.outcome is PollOutcome.OK
    assert await stored_ids(redis) == list(range(1, 201))  # only the complete poll
    assert monitor.history.consecutive_failures == 0
