"""JSON-lines logging for every role: one object per line, so log shippers need no parsing rules.

The command line (`bidengine`) configures it once per process (`configure`), before the role starts; the Faust
workers get the same set-up through `dict_config` (Faust replaces the root logger's handlers when it starts).

Each line has `time` (UTC, ISO 8601 with milliseconds), `level`, `logger` and `message`; fields passed with
`extra={...}` become top-level keys, which is how numbers (a poll's duration, items fetched) reach the log as
numbers and how a bid's `request_id` is on every gateway and agent line about that bid: one
`grep '"request_id": "<id>"'` follows it through the pipeline. A traceback is in `exception`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# The key under which a bid's request id is logged (the gateway's X-Request-Id, the field of the streams).
REQUEST_ID: Final = "request_id"


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """Every logger of the process to stderr as JSON lines at `level` (the root logger's only handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def dict_config(level: str) -> dict[str, Any]:
    """The same set-up as `configure`, as a `logging.config.dictConfig` dictionary (for Faust's worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonLinesFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
