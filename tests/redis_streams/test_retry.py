"""The shared back-off helper: delays, jitter and cap; retry forever on transient errors only; one log line per
outage start and end; which Redis errors are transient."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    DataError,
    ExecAbortError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from redis_streams.retry import Backoff, Outage, any_of, describe, is_redis_transient, retry
from schema.settings import Settings

log = logging.getLogger("tests.retry")


def test_nominal_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(0.2, 2.0)
    assert [backoff.nominal(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff.nominal(0) == 0.2
    assert backoff.nominal(100_000) == 2.0  # no float overflow after a very long outage


def test_jitter_stays_between_half_and_all_of_the_nominal_delay() -> None:
    backoff = Backoff(1.0, 8.0)
    assert backoff.delay(3, rand=lambda: 0.0) == 2.0
    assert backoff.delay(3, rand=lambda: 1.0) == 4.0
    assert backoff.delay(3, rand=lambda: 0.5) == 3.0
    delays = [backoff.delay(10) for _ in range(1000)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 900  # spread out: processes that failed together do not retry together


def test_backoff_comes_from_the_settings() -> None:
    assert Backoff.from_settings(Settings(retry_delay_s=0.5, retry_max_delay_s=9.0)) == Backoff(0.5, 9.0)


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


async def test_retry_outlives_transient_failures_with_growing_pauses(caplog: pytest.LogCaptureFixture) -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    changes: list[str | None] = []
    beats: list[int] = []
    outage = Outage("reading x", logger=log, on_change=changes.append)
    flaky = Flaky([ConnectionError("refused")] * 5)
    with caplog.at_level(logging.DEBUG, logger="tests.retry"):
        result = await retry(
            flaky,
            backoff=Backoff(0.1, 0.4),
            outage=outage,
            is_transient=is_redis_transient,
            beat=lambda: beats.append(1),
            sleep=sleep,
        )
    assert result == "done"
    assert flaky.calls == 6
    assert len(pauses) == 5
    assert all(0.05 <= pause <= 0.1 for pause in pauses[:1])
    assert all(0.2 <= pause <= 0.4 for pause in pauses[2:])
    assert len(beats) == 5  # a loop backing off is alive
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # the outage starts, the outage ends: not one line per retry
    assert warnings[0].startswith("reading x failed: ConnectionError: refused; retrying")
    assert warnings[1].startswith("reading x works again after")
    assert "(5 failed attempts)" in warnings[1]
    assert changes == ["reading x: ConnectionError: refused", None]
    assert not outage.active


async def test_retry_raises_what_is_not_transient_at_once() -> None:
    flaky = Flaky([ValueError("a bug")])
    outage = Outage("handling", logger=log)
    with pytest.raises(ValueError, match="a bug"):
        await retry(flaky, backoff=Backoff(0.1, 0.4), outage=outage, is_transient=is_redis_transient)
    assert flaky.calls == 1
    assert not outage.active  # a bug is not an outage


def test_an_outage_that_changes_its_face_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("reading x", logger=log)
    with caplog.at_level(logging.WARNING, logger="tests.retry"):
        for exc in [ConnectionError("refused")] * 3 + [TimeoutError("slow")] * 3 + [BusyLoadingError("loading")]:
            outage.failed(exc)
        outage.recovered()
        outage.recovered()  # outside an outage: nothing to say
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert "now: TimeoutError: slow" in messages[1]
    assert "now: BusyLoadingError: loading" in messages[2]
    assert "(7 failed attempts)" in messages[3]


def test_a_loop_failing_for_another_reason_logs_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("reading x", logger=log)
    with caplog.at_level(logging.WARNING, logger="tests.retry"):
        for _ in range(3):
            outage.failed(KeyError("field"), transient=False)
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert outage.problem == "reading x: KeyError: 'field'"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("Connection closed by server."), True),
        (TimeoutError("Timeout reading from socket"), True),
        (BusyLoadingError("Redis is loading the dataset in memory"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (OSError("no route to host"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (ResponseError("NOGROUP No such key 'bids:requests' or consumer group 'pricing'"), True),
        (ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"), True),
        (ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR wrong number of arguments for 'xadd' command"), False),
        (ExecAbortError("Transaction discarded because of previous errors."), False),
        (DataError("Invalid input of type: 'dict'"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_redis_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_redis_transient(error) is transient


def test_any_of_combines_checks() -> None:
    check = any_of(lambda e: isinstance(e, KeyError), is_redis_transient)
    assert check(KeyError("x"))
    assert check(ConnectionError("x"))
    assert not check(ValueError("x"))


def test_describe_names_the_error() -> None:
    assert describe(ConnectionError("refused")) == "ConnectionError: refused"
    assert describe(TimeoutError()) == "TimeoutError"
