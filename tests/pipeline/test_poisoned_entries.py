"""A poisoned entry among good ones, for each agent: the rest flows, only it is dead-lettered after
MAX_DELIVERIES deliveries, and `bidengine dead-letters replay` hands it back once, idempotently.

Real agent processes, whose handler has one bug injected (`tests.pipeline.poisoned_agent`: it raises for a
batch holding product 666 while a file exists). Entries are fed to the streams directly, so the batches are
known; order is proven from Redis's own entry ids (a reply written before the dead letter has a smaller id),
never from timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import redis as sync_redis

from bidengine.embedded import free_port
from schema import keys
from schema.database import BIDS_TABLE
from schema.events import BidRequested, DeadLetter, PricedBid, decode_replies
from tests.metrics_scrape import scrape
from tests.pipeline.conftest import ROOT, Pipeline
from tests.pipeline.outage_support import System, log_entries
from tests.pipeline.poisoned_agent import POISON_PRODUCT_ID
from tests.pipeline.test_failures import poll
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

MAX_DELIVERIES = 3
GOOD = 9


def id_ms(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def dead_letters_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bidengine.cli", "dead-letters", *args],
        env={**os.environ, "REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def metrics_url(pipeline: Pipeline) -> str:
    return f"http://127.0.0.1:{pipeline.env['METRICS_PORT_OF_TEST']}/metrics"


def start_poisoned_agent(agent: str, redis_url: str, database_url: str, tmp_path: Path) -> tuple[Pipeline, Path]:
    poison = tmp_path / "poison"
    poison.touch()
    port = str(free_port())
    env = {
        "PRICING_METRICS_PORT": port,
        "AUDIT_METRICS_PORT": port,
        "METRICS_PORT_OF_TEST": port,
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "INFO",
        "MAX_DELIVERIES": str(MAX_DELIVERIES),
        "CLAIM_IDLE_MS": "500",
        "TMPDIR": str(tmp_path),
        "POISON_FILE": str(poison),
    }
    pipeline = Pipeline(redis_url, database_url, env)
    pipeline.start(agent, module="tests.pipeline.poisoned_agent", log=tmp_path / f"{agent}.log")
    system = System(pipeline, tmp_path)
    poll(f"{agent} ready", lambda: (system.heartbeat(agent)[1] or {}).get("ready") is True)
    return pipeline, poison


def the_dead_letter(client: sync_redis.Redis, stream: str) -> tuple[str, DeadLetter]:
    [(letter_id, fields)] = client.xrange(stream)
    return letter_id, DeadLetter.from_fields(fields)


def test_poisoned_bid_request_is_dead_lettered_and_replayed_once(
    redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    redis_url = redis_server.start()
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    pipeline, poison = start_poisoned_agent("pricing-agent", redis_url, database_url, tmp_path)
    try:
        replies = f"{keys.REPLY_STREAM_PREFIX}poison-{uuid.uuid4().hex[:6]}"
        base = 66_600_000 + int(uuid.uuid4().int % 1000) * 100
        products = [base + n for n in range(GOOD)]
        products.insert(4, int(POISON_PRODUCT_ID))
        requests = [
            BidRequested(str(uuid.uuid4()), replies, f"r{n}", product, 1.5, 150.0) for n, product in enumerate(products)
        ]
        with client.pipeline(transaction=True) as pipe:  # one write: the agent reads them as one batch
            for request in requests:
                pipe.xadd(keys.BID_REQUESTS, request.to_fields())  # type: ignore[arg-type]
            ids = pipe.execute()
        poisoned = requests[4]

        def answered() -> dict[str, tuple[str, int | None]]:
            return {
                reply.reply_id: (entry_id, reply.bid_id)
                for entry_id, fields in client.xrange(replies)
                for reply in decode_replies(fields)
            }

        poll("the good bids answered", lambda: len(answered()) >= GOOD)
        poll("the poisoned request dead-lettered", lambda: client.xlen(keys.BIDS_DEAD_LETTER) == 1)
        letter_id, letter = the_dead_letter(client, keys.BIDS_DEAD_LETTER)
        assert letter.entry_id == ids[4]
        assert (letter.stream, letter.group, letter.deliveries) == (keys.BID_REQUESTS, keys.PRICING_GROUP, 3)
        assert letter.reason.startswith("PoisonedEntry: cannot handle")
        assert dict(letter.fields) == poisoned.to_fields()
        # The rest flowed first: every good reply was written before the dead letter.
        assert set(answered()) == {request.reply_id for request in requests} - {poisoned.reply_id}
        assert all(id_ms(entry_id) < id_ms(letter_id) for entry_id, _ in answered().values())
        last_good = max(id_ms(entry_id) for entry_id, _ in answered().values())
        print(
            f"\n=== poisoned request: {GOOD} good bids answered, then the poisoned one dead-lettered "
            f"{id_ms(letter_id)[0] - last_good[0]} ms later, after {MAX_DELIVERIES} deliveries (CLAIM_IDLE_MS=500)"
        )
        assert client.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP)["pending"] == 0
        with psycopg.connect(database_url, autocommit=True) as db:
            stored = dict(
                db.execute(
                    f"SELECT request_id::text, id FROM {BIDS_TABLE} WHERE request_id = ANY(%s::uuid[])",
                    ([r.request_id for r in requests],),
                ).fetchall()
            )
        assert set(stored) == {r.request_id for r in requests} - {poisoned.request_id}
        log = (tmp_path / "pricing-agent.log").read_text()
        assert log.count("failed on its own at delivery") == MAX_DELIVERIES - 1, log
        assert log.count("dead-lettering entry") == 1
        # Every line about the poisoned bid names it: one grep on its request id follows it.
        about_it = [
            entry
            for entry in log_entries(log)
            if "failed on its own" in entry["message"] or "dead-lettering entry" in entry["message"]
        ]
        assert len(about_it) == MAX_DELIVERIES
        assert {entry["request_id"] for entry in about_it} == {poisoned.request_id}
        # Its /metrics: the two later deliveries were XAUTOCLAIMs, the batch was bisected (its halves handed
        # again), one dead letter; every good bid stored.
        samples = scrape(metrics_url(pipeline))
        group = f'group="{keys.PRICING_GROUP}",stream="{keys.BID_REQUESTS}"'
        assert samples[f"bidengine_stream_reclaimed_total{{{group}}}"] == MAX_DELIVERIES - 1
        assert samples[f"bidengine_stream_redeliveries_total{{{group}}}"] >= GOOD + 1
        assert samples[f'bidengine_dead_letters_total{{stream="{keys.BIDS_DEAD_LETTER}"}}'] == 1
        assert samples['bidengine_pricing_replies_total{outcome="stored"}'] == GOOD
        assert samples[f'bidengine_dead_letter_entries{{stream="{keys.BIDS_DEAD_LETTER}"}}'] == 1

        listed = dead_letters_cli(redis_url, "list", "--stream", keys.BIDS_DEAD_LETTER)
        assert listed.returncode == 0, listed.stderr
        assert letter_id in listed.stdout
        assert "deliveries=3" in listed.stdout

        poison.unlink()  # the fix is deployed
        replayed = dead_letters_cli(redis_url, "replay", "--stream", keys.BIDS_DEAD_LETTER, letter_id)
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {letter_id} ->" in replayed.stdout
        poll("the replayed bid answered", lambda: poisoned.reply_id in answered())
        assert client.xlen(keys.BIDS_DEAD_LETTER) == 0
        with psycopg.connect(database_url, autocommit=True) as db:
            rows = db.execute(f"SELECT id FROM {BIDS_TABLE} WHERE request_id = %s", (poisoned.request_id,)).fetchall()
        assert rows == [(answered()[poisoned.reply_id][1],)]

        # Replaying a letter whose bid is already stored stores nothing new and answers with the stored bid.
        again = DeadLetter(ids[4], keys.BID_REQUESTS, "replayed by hand", poisoned.to_fields(), group="pricing")
        second_id = client.xadd(keys.BIDS_DEAD_LETTER, again.to_fields())  # type: ignore[arg-type]
        before = len(client.xrange(replies))
        replayed = dead_letters_cli(redis_url, "replay", "--stream", keys.BIDS_DEAD_LETTER, "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {second_id} ->" in replayed.stdout
        poll("the second replay answered", lambda: len(client.xrange(replies)) > before)
        [(_, last)] = client.xrevrange(replies, count=1)
        assert decode_replies(last)[0].bid_id == rows[0][0]
        with psycopg.connect(database_url, autocommit=True) as db:
            (count,) = db.execute(
                f"SELECT count(*) FROM {BIDS_TABLE} WHERE request_id = ANY(%s::uuid[])",
                ([r.request_id for r in requests],),
            ).fetchone()
        assert count == GOOD + 1
    finally:
        pipeline.stop_all()
        client.close()


def priced(bid_id: int, product_id: int) -> PricedBid:
    return PricedBid(
        bid_id=bid_id,
        request_id=str(uuid.uuid4()),
        product_id=product_id,
        current_cpc=Decimal("10.00"),
        target_roas=Decimal("150"),
        adjusted_cpc=Decimal("15.00"),  # +50%: flagged
        calculated_at=datetime.now(UTC),
    )


def test_poisoned_priced_bid_is_dead_lettered_and_replayed_once(
    redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    redis_url = redis_server.start()
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    pipeline, poison = start_poisoned_agent("audit-agent", redis_url, database_url, tmp_path)
    try:
        bids = [priced(9_000_000 + n, 88_800 + n) for n in range(GOOD)]
        bids.insert(4, priced(9_000_100, int(POISON_PRODUCT_ID)))
        with client.pipeline(transaction=True) as pipe:
            for bid in bids:
                pipe.xadd(keys.BIDS_PRICED, bid.to_fields())  # type: ignore[arg-type]
            ids = pipe.execute()
        day = keys.audit_day_key(datetime.now(UTC).date())

        def reviewed() -> int:
            return int(client.hget(day, "reviewed") or 0)

        poll("the good bids reviewed", lambda: reviewed() == GOOD)
        poll("the poisoned bid dead-lettered", lambda: client.xlen(keys.AUDIT_DEAD_LETTER) == 1)
        letter_id, letter = the_dead_letter(client, keys.AUDIT_DEAD_LETTER)
        assert letter.entry_id == ids[4]
        assert (letter.stream, letter.group, letter.deliveries) == (keys.BIDS_PRICED, keys.AUDIT_GROUP, 3)
        assert dict(letter.fields) == bids[4].to_fields()
        assert client.xpending(keys.BIDS_PRICED, keys.AUDIT_GROUP)["pending"] == 0
        assert client.xlen(keys.AUDIT_FLAGS) == GOOD  # one flag per good bid, none for the poisoned one
        assert reviewed() == GOOD

        poison.unlink()
        replayed = dead_letters_cli(redis_url, "replay", "--stream", keys.AUDIT_DEAD_LETTER, letter_id)
        assert replayed.returncode == 0, replayed.stderr
        poll("the replayed bid reviewed", lambda: reviewed() == GOOD + 1)
        assert client.xlen(keys.AUDIT_FLAGS) == GOOD + 1

        # A second replay of the same bid counts nothing: the bid was seen.
        again = DeadLetter(ids[4], keys.BIDS_PRICED, "replayed by hand", bids[4].to_fields(), group="audit")
        client.xadd(keys.AUDIT_DEAD_LETTER, again.to_fields())  # type: ignore[arg-type]
        replayed = dead_letters_cli(redis_url, "replay", "--stream", keys.AUDIT_DEAD_LETTER, "--all")
        assert replayed.returncode == 0, replayed.stderr
        new_id = replayed.stdout.split(" -> ")[1].split()[0]

        def handled() -> bool:
            [group] = [g for g in client.xinfo_groups(keys.BIDS_PRICED) if g["name"] == keys.AUDIT_GROUP]
            delivered = id_ms(str(group["last-delivered-id"])) >= id_ms(new_id)
            return delivered and int(group["pending"]) == 0

        poll("the second replay handled", handled)
        assert reviewed() == GOOD + 1
        assert client.xlen(keys.AUDIT_FLAGS) == GOOD + 1
    finally:
        pipeline.stop_all()
        client.close()
