"""Consumer-group state as Prometheus metrics, read from Redis when Prometheus scrapes (docs/metrics.md).

The state lives in Redis, not in any process: `XINFO GROUPS` gives each group's pending count and lag, the
group's presence set (`consumers:<group>`, where each consumer announces itself after its reads:
`redis_streams.groups`) its live consumers, `XLEN` the length of each dead-letter stream. Every agent exposes
the state of every group (the values are the same whichever agent answers; dashboards and alerts take the
`max` by stream and group), so the pricing group's backlog stays visible while no pricing agent runs.

`collect()` runs in the metrics server's thread (`telemetry.metrics`), never on an agent's event loop: it uses
its own synchronous Redis client with short timeouts, one pipelined round trip per scrape. When Redis does not
answer, the scrape still succeeds with `bidengine_stream_state_up 0` and no stale values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError, ResponseError

from redis_streams.groups import LIVE_CONSUMERS_SCRIPT
from schema import keys

# Every consumer group of the product and every dead-letter stream (schema/keys.py), watched by default.
PRODUCT_GROUPS: Final = ((keys.BID_REQUESTS, keys.PRICING_GROUP), (keys.BIDS_PRICED, keys.AUDIT_GROUP))
DEAD_LETTER_STREAMS: Final = tuple(sorted(keys.DEAD_LETTER_STREAMS))
REDIS_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class GroupState:
    stream: str
    group: str
    exists: bool
    pending: int = 0
    # Entries the group has not finished: not yet delivered (Redis 7 `lag`) plus pending, the same number the
    # gateway compares with MAX_PRICING_LAG. Redis 6.2 (or a lag Redis cannot compute) reports pending only.
    backlog: int = 0
    live_consumers: int = 0


@dataclass(frozen=True, slots=True)
class StreamsState:
    groups: tuple[GroupState, ...]
    dead_letters: dict[str, int]


def connect(url: str) -> redis.Redis:
    """The collector's own client: synchronous, short timeouts, no retries (the next scrape is the retry)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry_on_timeout=False,
    )


def _unless_missing(reply: Any, *, default: Any) -> Any:
    """A pipelined reply; `default` for a missing key or group (a ResponseError), other errors raised."""
    if isinstance(reply, ResponseError):
        return default
    if isinstance(reply, Exception):
        raise reply
    return reply


class GroupStateCollector:
    """A prometheus-client collector of `groups` and `dead_letter_streams`; register it on a role's registry."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        alive_ms: int,
        groups: Sequence[tuple[str, str]] = PRODUCT_GROUPS,
        dead_letter_streams: Sequence[str] = DEAD_LETTER_STREAMS,
    ) -> None:
        self.client = client
        # A consumer that has not announced itself for this long is not live: CONSUMER_ALIVE_MS, the gateway's
        # own threshold for "no pricing agent is alive" (a reading consumer announces itself every second).
        self.alive_ms = alive_ms
        self.groups = tuple(groups)
        self.dead_letter_streams = tuple(dead_letter_streams)

    def read(self) -> StreamsState:
        """The state of every watched group and dead-letter stream, in one pipelined round trip."""
        streams = sorted({stream for stream, _ in self.groups})
        with self.client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
            for stream in self.dead_letter_streams:
                pipe.xlen(stream)
            for _, group in self.groups:
                pipe.eval(LIVE_CONSUMERS_SCRIPT, 1, keys.consumers_key(group), self.alive_ms)
            replies = pipe.execute(raise_on_error=False)
        group_replies = replies[: len(streams)]
        dead_replies = replies[len(streams) : len(streams) + len(self.dead_letter_streams)]
        live_replies = replies[len(streams) + len(self.dead_letter_streams) :]
        infos: dict[tuple[str, str], dict[str, Any]] = {}
        for stream, reply in zip(streams, group_replies, strict=True):
            # No such stream yet: none of its groups exists.
            for info in _unless_missing(reply, default=[]):
                infos[(stream, str(info["name"]))] = info
        dead_letters = {
            stream: int(_unless_missing(reply, default=0))
            for stream, reply in zip(self.dead_letter_streams, dead_replies, strict=True)
        }
        live = {
            key: int(_unless_missing(reply, default=0)) for key, reply in zip(self.groups, live_replies, strict=True)
        }
        groups = tuple(self._group_state(key, infos.get(key), live[key]) for key in self.groups)
        return StreamsState(groups, dead_letters)

    @staticmethod
    def _group_state(key: tuple[str, str], info: dict[str, Any] | None, live: int) -> GroupState:
        stream, group = key
        if info is None:
            return GroupState(stream, group, exists=False, live_consumers=live)
        pending = int(info["pending"])
        lag = info.get("lag")
        backlog = pending + (int(lag) if lag is not None else 0)
        return GroupState(stream, group, exists=True, pending=pending, backlog=backlog, live_consumers=live)

    def describe(self) -> Iterable[Metric]:
        # Registering must not query Redis: the same families, without samples.
        return list(self._families(None, sampled=False))

    def collect(self) -> Iterable[Metric]:
        state: StreamsState | None = None
        with contextlib.suppress(RedisError, OSError):
            state = self.read()
        return list(self._families(state))

    def _families(self, state: StreamsState | None, *, sampled: bool = True) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bidengine_stream_state_up", "1 when this scrape read the consumer-group state from Redis, else 0."
        )
        lag = GaugeMetricFamily(
            "bidengine_stream_group_lag",
            "Entries of the stream the group has not finished: not yet delivered plus pending.",
            labels=("stream", "group"),
        )
        pending = GaugeMetricFamily(
            "bidengine_stream_group_pending",
            "Entries delivered to a consumer of the group and not yet acknowledged.",
            labels=("stream", "group"),
        )
        consumers = GaugeMetricFamily(
            "bidengine_stream_group_consumers",
            "Live consumers of the group: announced in consumers:<group> within CONSUMER_ALIVE_MS.",
            labels=("stream", "group"),
        )
        dead = GaugeMetricFamily(
            "bidengine_dead_letter_entries", "Entries in the dead-letter stream (XLEN).", labels=("stream",)
        )
        if state is not None:
            up.add_metric((), 1)
            for group in state.groups:
                labels = (group.stream, group.group)
                consumers.add_metric(labels, group.live_consumers)
                if group.exists:
                    lag.add_metric(labels, group.backlog)
                    pending.add_metric(labels, group.pending)
            for stream, length in state.dead_letters.items():
                dead.add_metric((stream,), length)
        elif sampled:
            up.add_metric((), 0)
        yield from (up, lag, pending, consumers, dead)
