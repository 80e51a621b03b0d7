"""JSON-lines logging: every line one object, `extra` fields at the top level (the request id among them),
tracebacks inside the line, the same set-up through `dict_config` (the Faust workers)."""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys
from datetime import datetime

from telemetry.logs import REQUEST_ID, JsonLinesFormatter, dict_config


def format_record(**kwargs: object) -> dict[str, object]:
    record = logging.makeLogRecord({"name": "ingest.app", "levelno": logging.WARNING, "levelname": "WARNING", **kwargs})
    line = JsonLinesFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_a_line_is_one_json_object_with_the_extra_fields() -> None:
    entry = format_record(msg="bid %s answered 504", args=("x",), request_id="3f1c", attempts=2)
    assert entry["message"] == "bid x answered 504"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "ingest.app"
    assert entry[REQUEST_ID] == "3f1c"
    assert entry["attempts"] == 2  # numbers stay numbers
    assert str(entry["time"]).endswith("Z")
    datetime.fromisoformat(str(entry["time"]))


def test_a_traceback_stays_inside_its_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = format_record(msg="failed", exc_info=sys.exc_info())
    assert "RuntimeError: boom" in str(entry["exception"])


def test_every_role_logs_json_lines_through_the_command_line() -> None:
    """`bidengine` configures the root logger: any library's line (here the CLI's own) is a JSON object."""
    script = (
        "import logging, sys\n"
        "from telemetry.logs import configure\n"
        "configure('INFO')\n"
        "logging.getLogger('faust.worker').info('started', extra={'request_id': 'abc'})\n"
        "logging.getLogger('x').debug('not shown')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["logger"], line["message"], line["request_id"]) for line in lines] == [
        ("faust.worker", "started", "abc")
    ]


def test_dict_config_sets_up_the_same_lines() -> None:
    script = (
        "import logging, logging.config\n"
        "from telemetry.logs import dict_config\n"
        "logging.config.dictConfig(dict_config('WARNING'))\n"
        "logging.getLogger('mode').info('hidden')\n"
        "logging.getLogger('processors.bridge').warning('dead-lettering', extra={'request_id': 'r1'})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    (line,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert (line["message"], line["request_id"], line["level"]) == ("dead-lettering", "r1", "WARNING")
    assert dict_config("info")["root"]["level"] == "INFO"
