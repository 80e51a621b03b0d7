"""Which failures of an agent are transient: a backend away, not the entries in hand.

A transient failure is retried with back-off for as long as it lasts and never counts against an entry (an
outage must not dead-letter the stream); anything else is an entry's own failure, which the bridge isolates
(`processors.bridge`) and dead-letters once it has failed `MAX_DELIVERIES` times.
"""

from __future__ import annotations

import asyncpg

from redis_streams.retry import any_of, is_redis_transient

# SQLSTATE classes and codes that describe the server, not the statement: connection exceptions (08),
# insufficient resources (53: too many connections, disk full), operator intervention (57P01-57P03: shutting
# down, crashed, starting up), a read-only server (25006: a failover landed us on a replica), and conflicts a
# retry resolves (40: serialization failure, deadlock).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "40")
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "25006"}
# asyncpg's own words for a connection or pool that went away under us.
_CLOSED = ("connection is closed", "connection was closed", "pool is closing", "underlying connection is closed")


def is_postgres_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, DNS during a failover; command_timeout
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state in _TRANSIENT_SQLSTATES or state.startswith(_TRANSIENT_SQLSTATE_CLASSES)
    if isinstance(exc, asyncpg.InterfaceError):
        return any(words in str(exc) for words in _CLOSED)
    return isinstance(exc, asyncpg.exceptions.OutdatedSchemaCacheError)  # a migration ran: re-prepare and retry


is_transient = any_of(is_redis_transient, is_postgres_transient)
