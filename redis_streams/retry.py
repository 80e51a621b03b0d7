"""Riding out outages: exponential back-off with jitter, one log line per outage, and which errors are transient.

Every loop of every role that talks to Redis or PostgreSQL (the agents' read, handle, acknowledge and reclaim
loops, the stream trimming, the daily audit, the gateway's reply reader and backend monitor) goes through these,
so they all behave the same way through an outage, as Kafka consumers and Sidekiq do:

* A *transient* failure (the backend is unreachable, restarting, failing over, out of memory) is retried
  forever, never given up on and never blamed on the work in hand: an outage of any length must not kill a
  loop or dead-letter the entries it was handling.
* Retries back off exponentially from `RETRY_DELAY_S` to `RETRY_MAX_DELAY_S` with "equal jitter" (each pause
  is between half and all of its nominal value), so processes that failed together do not come back in
  lockstep, and a backend that returns is used again within `RETRY_MAX_DELAY_S`.
* An outage is logged twice: when it starts (the first failure, with its error) and when it ends (how long it
  lasted, how many attempts failed). Attempts in between log at DEBUG only. A loop reports its state through
  `Outage.on_change`, which the roles wire to their readiness.

Anything else (a bug, a poisoned entry) is the caller's business: `retry` raises it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from schema.settings import Settings

T = TypeVar("T")
TransientCheck = Callable[[BaseException], bool]

# Error replies that describe the server's state (restarted empty, loading, failing over), not the command.
_TRANSIENT_REPLIES = ("NOGROUP", "BUSY", "NOREPLICAS", "MISCONF", "UNBLOCKED", "LOADING", "MASTERDOWN")
# Exponents beyond this would overflow a float; the cap is reached long before anyway.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses between attempts: `initial_s` doubling (by `multiplier`) up to `max_s`, with equal jitter."""

    initial_s: float
    max_s: float
    multiplier: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(settings.retry_delay_s, settings.retry_max_delay_s)

    def nominal(self, failures: int) -> float:
        """The pause after `failures` failures in a row (1 for the first), before jitter."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def delay(self, failures: int, *, rand: Callable[[], float] = random.random) -> float:
        """Between half and all of `nominal(failures)`: spread out, yet never hammering a backend that is away."""
        nominal = self.nominal(failures)
        return nominal / 2 + rand() * nominal / 2


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Outage:
    """One loop's view of the backends it needs: logs when an outage starts and when it ends, once each.

    `failed()` after each failed attempt, `recovered()` after each successful one (a no-op outside an outage).
    `on_change(problem)` is called with a one-line description when an outage starts (or its error changes)
    and with None when it ends: the roles wire it to their readiness.
    """

    def __init__(
        self,
        what: str,
        *,
        logger: logging.Logger,
        on_change: Callable[[str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.logger = logger
        self.on_change = on_change
        self.clock = clock
        self.failures = 0
        self.since: float | None = None
        self.error: str | None = None
        self._kind: type[BaseException] | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def problem(self) -> str | None:
        return None if self.error is None else f"{self.what}: {self.error}"

    def failed(self, exc: BaseException, *, transient: bool = True) -> None:
        self.failures += 1
        self.error = describe(exc)
        if self.since is None:
            self.since = self.clock()
            self._kind = type(exc)
            if transient:
                self.logger.warning("%s failed: %s; retrying with back-off until it works", self.what, self.error)
            else:
                self.logger.error("%s failed; retrying with back-off", self.what, exc_info=exc)
        elif type(exc) is not self._kind:
            # The same outage with another face (refused, then timing out, then loading): say so once.
            self._kind = type(exc)
            self.logger.warning("%s still failing, now: %s", self.what, self.error)
        else:
            self.logger.debug("%s failed again (%d in a row): %s", self.what, self.failures, self.error)
            return
        if self.on_change is not None:
            self.on_change(self.problem)

    def recovered(self) -> None:
        if self.since is None:
            return
        lasted = self.clock() - self.since
        self.logger.warning("%s works again after %.1f s (%d failed attempts)", self.what, lasted, self.failures)
        self.failures, self.since, self.error, self._kind = 0, None, None, None
        if self.on_change is not None:
            self.on_change(None)


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    outage: Outage,
    is_transient: TransientCheck,
    beat: Callable[[], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """`await operation()` until it succeeds. Transient failures are retried forever with back-off (and
    reported through `outage`); anything else is raised at once. `beat` is called after each failed attempt:
    a loop that is backing off is alive, not hung."""
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            outage.failed(exc)
            if beat is not None:
                beat()
            await sleep(backoff.delay(outage.failures))
            continue
        outage.recovered()
        return result


def is_redis_transient(exc: BaseException) -> bool:
    """True for failures that come from Redis's state (unreachable, restarting, failing over, full), which a
    retry can outlive; False for errors a command would get again (a bug, a malformed entry)."""
    if isinstance(exc, ConnectionError | RedisTimeoutError | OSError | TimeoutError):
        return True  # BusyLoadingError and MaxConnectionsError are ConnectionErrors
    if isinstance(exc, OutOfMemoryError | ReadOnlyError | TryAgainError | ClusterDownError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def any_of(*checks: TransientCheck) -> TransientCheck:
    """A check that is True when any of `checks` is (e.g. Redis or PostgreSQL)."""
    return lambda exc: any(check(exc) for check in checks)
