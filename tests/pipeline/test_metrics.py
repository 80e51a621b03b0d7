"""Every role's /metrics scraped after real traffic, with real processes: the counters moved by exactly what was
sent. A gateway, a pricing agent and an audit agent, each on its own metrics port; bids that are stored, replayed,
in conflict, invalid; answers the HTTP edge writes itself (503 past MAX_CONNECTIONS, 431, 408); an entry only a
dead letter can take; then the consumer-group state (lag, pending, live consumers, dead-letter lengths)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis as sync_redis

from bidengine.embedded import free_port
from schema import keys
from tests.metrics_scrape import exposed_labels, moved, scrape
from tests.pipeline.conftest import Pipeline
from tests.pipeline.test_failures import poll, post_bid
from tests.servers import RedisServer
from tests.test_metrics import documented_metrics

MAX_CONNECTIONS = 3
# Small, so that headers past it arrive in one read on loopback: the gateway has read everything when it closes
# (unread bytes would turn its close into a reset, and the 431 could be lost).
MAX_HEADER_BYTES = 2048


@dataclass
class Roles:
    pipeline: Pipeline
    gateway: str
    pricing: str
    audit: str
    gateway_port: int


@pytest.fixture(scope="module")
def roles(private_redis_server: RedisServer, database_url: str) -> Iterator[Roles]:
    env = {
        **os.environ,
        "REDIS_URL": private_redis_server.url(6),
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "METRICS_HOST": "127.0.0.1",
        "PRICING_METRICS_PORT": str(free_port()),
        "AUDIT_METRICS_PORT": str(free_port()),
    }
    pipeline = Pipeline(env["REDIS_URL"], database_url, env)
    sync_redis.Redis.from_url(pipeline.redis_url).flushdb()
    try:
        pipeline.start("pricing-agent")
        pipeline.start("audit-agent")
        pipeline.start_gateway(
            MAX_CONNECTIONS=str(MAX_CONNECTIONS), HEADER_TIMEOUT_S="1", MAX_HEADER_BYTES=str(MAX_HEADER_BYTES)
        )
        port = int(pipeline.gateway_url.rsplit(":", 1)[1])
        pricing = f"http://127.0.0.1:{env['PRICING_METRICS_PORT']}/metrics"
        audit = f"http://127.0.0.1:{env['AUDIT_METRICS_PORT']}/metrics"
        for url in (pricing, audit):
            poll(f"{url} answering", lambda url=url: scrape(url))
        yield Roles(pipeline, f"{pipeline.gateway_url}/metrics", pricing, audit, port)
    finally:
        pipeline.stop_all()


def bid(product_id: int, current_cpc: float, target_roas: float) -> dict[str, float]:
    return {"product_id": product_id, "current_cpc": current_cpc, "target_roas": target_roas}


def raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data` on a fresh connection (then shut down our side if `half_close`) and read until it is closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def test_every_role_counts_exactly_what_was_sent(roles: Roles) -> None:
    gateway_before, pricing_before, audit_before = scrape(roles.gateway), scrape(roles.pricing), scrape(roles.audit)

    flagged = [post_bid(roles.pipeline, bid(100 + i, 1.0, 150.0), {"Idempotency-Key": f"m-{i}"}) for i in range(4)]
    unflagged = [post_bid(roles.pipeline, bid(200 + i, 1.0, 110.0)) for i in range(3)]
    replay = post_bid(roles.pipeline, bid(100, 1.0, 150.0), {"Idempotency-Key": "m-0"})
    conflict = post_bid(roles.pipeline, bid(100, 2.0, 150.0), {"Idempotency-Key": "m-0"})
    invalid = [
        post_bid(roles.pipeline, bid(0, 1.0, 150.0)),
        post_bid(roles.pipeline, {"product_id": 1}),
        post_bid(roles.pipeline, "not an object"),
    ]
    assert [r[0] for r in flagged + unflagged + [replay]] == [200] * 8
    assert conflict[0] == 422
    assert [r[0] for r in invalid] == [400] * 3

    # Answers the edge writes itself: past MAX_CONNECTIONS (503), headers too large (431), too slow (408).
    held = [socket.create_connection(("127.0.0.1", roles.gateway_port)) for _ in range(MAX_CONNECTIONS)]
    try:
        assert raw_exchange(roles.gateway_port, b"").startswith(b"HTTP/1.1 503")
    finally:
        for connection in held:
            connection.close()
    head = b"POST /api/bid/ HTTP/1.1\r\nHost: gateway\r\n"
    too_large = head + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 1000) for i in range(3))
    # The held connections' closing may not be seen yet: a connection that still finds the gateway full is
    # refused again (and counted). Probe with connections that send nothing and half-close, until one is accepted
    # (then closed without an answer), counting the refusals.
    refused = 1
    while raw_exchange(roles.gateway_port, b"", half_close=True).startswith(b"HTTP/1.1 503"):
        refused += 1
        time.sleep(0.05)
    answer = raw_exchange(roles.gateway_port, too_large)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert raw_exchange(roles.gateway_port, head).startswith(b"HTTP/1.1 408")

    # An entry the pricing agent can never decode: dead-lettered at once, no reply to anybody.
    client = sync_redis.Redis.from_url(roles.pipeline.redis_url, decode_responses=True)
    client.xadd(keys.BID_REQUESTS, {"not": "a bid"})
    poll("the dead letter", lambda: client.xlen(keys.BIDS_DEAD_LETTER) == 1)

    gateway = moved(gateway_before, scrape(roles.gateway))
    bid_route = 'method="POST",route="/api/bid/"'
    assert {name: value for name, value in gateway.items() if name.startswith("bidengine_http_requests")} == {
        f'bidengine_http_requests_total{{{bid_route},status="200"}}': 8,
        f'bidengine_http_requests_total{{{bid_route},status="422"}}': 1,
        f'bidengine_http_requests_total{{{bid_route},status="400"}}': 3,
        'bidengine_http_requests_total{method="other",route="other",status="503"}': refused,
        'bidengine_http_requests_total{method="other",route="other",status="431"}': 1,
        'bidengine_http_requests_total{method="other",route="other",status="408"}': 1,
        # The scrape that took `gateway_before`, answered once it was taken.
        'bidengine_http_requests_total{method="GET",route="/metrics",status="200"}': 1,
    }
    assert gateway['bidengine_http_request_duration_seconds_count{route="/api/bid/"}'] == 12
    assert gateway["bidengine_gateway_reply_wait_seconds_count"] == 9  # every bid published: 8 + the conflict
    assert gateway['bidengine_gateway_unavailable_total{reason="connections"}'] == refused
    assert not any(name.startswith("bidengine_gateway_reply_timeouts") for name in gateway)

    pricing_after = poll("the pricing agent's batches", lambda: scrape(roles.pricing))
    pricing = moved(pricing_before, pricing_after)
    assert {name: value for name, value in pricing.items() if "_total" in name and "batches" not in name} == {
        'bidengine_pricing_replies_total{outcome="stored"}': 7,
        'bidengine_pricing_replies_total{outcome="replayed"}': 1,
        'bidengine_pricing_replies_total{outcome="conflict"}': 1,
        'bidengine_dead_letters_total{stream="bids:dead"}': 1,
    }
    batches = pricing["bidengine_pricing_batches_total"]
    assert pricing["bidengine_pricing_batch_size_count"] == batches
    assert pricing["bidengine_pricing_batch_size_sum"] == 10  # 9 bids and the undecodable entry
    # Every batch but the undecodable entry's, alone on the stream, stored something.
    assert pricing["bidengine_pricing_store_duration_seconds_count"] == batches - 1

    def audit_done() -> dict[str, float] | None:
        delta = moved(audit_before, scrape(roles.audit))
        return delta if delta.get("bidengine_audit_duplicates_skipped_total") else None

    audit = poll("the audit agent skipping the replayed bid", audit_done)
    assert {name: value for name, value in audit.items() if name.startswith("bidengine_audit")} == {
        "bidengine_audit_bids_reviewed_total": 7,
        "bidengine_audit_bids_flagged_total": 4,  # +50%; the others moved 10%
        "bidengine_audit_duplicates_skipped_total": 1,  # the replay published the stored bid again
    }
    assert audit_done() == audit, "nothing else arrives"

    def drained() -> dict[str, float] | None:
        samples = scrape(roles.audit)
        lags = [samples.get(f'bidengine_stream_group_lag{{group="{g}",stream="{s}"}}') for s, g in GROUPS]
        return samples if lags == [0, 0] else None

    for samples in (poll("both groups drained", drained), scrape(roles.pricing)):
        assert samples["bidengine_stream_state_up"] == 1
        for stream, group in GROUPS:
            labels = f'{{group="{group}",stream="{stream}"}}'
            assert samples[f"bidengine_stream_group_pending{labels}"] == 0
            assert samples[f"bidengine_stream_group_consumers{labels}"] == 1
        assert samples['bidengine_dead_letter_entries{stream="bids:dead"}'] == 1
        assert samples['bidengine_dead_letter_entries{stream="audit:dead"}'] == 0
    client.close()

    # docs/metrics.md lists each family as these endpoints expose it: its type and its labels.
    documented = documented_metrics()
    for url in (roles.gateway, roles.pricing, roles.audit):
        for name, (kind, labels) in exposed_labels(url).items():
            assert documented.get(name) == (kind, labels), f"{url}: {name} is a {kind} with labels {labels}"


GROUPS = ((keys.BID_REQUESTS, keys.PRICING_GROUP), (keys.BIDS_PRICED, keys.AUDIT_GROUP))


def test_the_backlog_and_a_silent_pricing_group_are_visible(roles: Roles) -> None:
    """Entries nobody has read are counted in the lag from both agents' endpoints (Redis 7's `lag`)."""
    client = sync_redis.Redis.from_url(roles.pipeline.redis_url, decode_responses=True)
    try:
        if int(str(client.info("server")["redis_version"]).split(".")[0]) < 7:
            pytest.skip("Redis 6.2 reports no lag of undelivered entries")
        roles.pipeline.processes["pricing-agent"].send_signal(19)  # SIGSTOP: reads nothing, announces nothing
        try:
            time.sleep(0.5)
            for i in range(5):
                client.xadd(keys.BID_REQUESTS, {"undelivered": str(i)})
            labels = f'{{group="{keys.PRICING_GROUP}",stream="{keys.BID_REQUESTS}"}}'
            samples = poll("the backlog", lambda: scrape(roles.audit).get(f"bidengine_stream_group_lag{labels}") == 5)
            assert samples
        finally:
            roles.pipeline.processes["pricing-agent"].send_signal(18)  # SIGCONT
        poll("the dead letters of the undecodable entries", lambda: client.xlen(keys.BIDS_DEAD_LETTER) == 6)
    finally:
        client.close()
