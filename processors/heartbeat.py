"""An agent's heartbeat file: its age says the agent is alive, its content whether it is ready, and why not.

Written by the agent's worker (`Heartbeat`), read by `bidengine probe <role>` (`read_heartbeat`) in the pod, so
this module imports nothing heavy (the probe runs every few seconds).

* **Alive** (liveness): the file is younger than the probe's `--max-age-s`. It is rewritten (at most once a
  second) whenever one of the loops that must keep turning does: the consumer-group read loop after each read,
  and every retry loop after each failed attempt. A loop that is backing off through an outage is working as
  intended, so an outage of any length keeps the agent alive; a loop that stops (a handler stuck forever, the
  bounded channel then blocks the reader) lets the file age, and the pod is restarted.
* **Ready** (readiness): the content, a small JSON object: `ready` is false while a loop reports a problem
  (Redis or PostgreSQL unreachable, a read failing), with each problem spelled out for the probe to print.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def heartbeat_path(role: str) -> str:
    """The heartbeat file of `role` (`pricing-agent`, `audit-agent`) in the temporary directory (`TMPDIR`)."""
    return os.path.join(tempfile.gettempdir(), f"bidengine-{role}.alive")


class Heartbeat:
    """The writer. `beat()`: a loop turned. `report(component, problem)`: a component's problem, or None once
    it is solved; components reported with `readiness=False` are shown but do not make the agent unready."""

    def __init__(
        self, path: str | None, *, min_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._problems: dict[str, tuple[str, bool]] = {}
        self._last_write = float("-inf")
        self._write_failed = False

    @property
    def ready(self) -> bool:
        return not any(readiness for _, readiness in self._problems.values())

    @property
    def problems(self) -> list[str]:
        return [f"{component}: {problem}" for component, (problem, _) in sorted(self._problems.items())]

    def beat(self) -> None:
        if self.clock() - self._last_write >= self.min_interval_s:
            self._write()

    def report(self, component: str, problem: str | None, *, readiness: bool = True) -> None:
        before = dict(self._problems)
        if problem is None:
            self._problems.pop(component, None)
        else:
            self._problems[component] = (problem, readiness)
        if self._problems != before:
            self._write()  # a change is visible at once, not a second later

    def state(self) -> dict[str, Any]:
        ready = self.ready
        blocking = [f"{c}: {p}" for c, (p, r) in sorted(self._problems.items()) if r]
        degraded = [f"{c}: {p}" for c, (p, r) in sorted(self._problems.items()) if not r]
        return {"ready": ready, "problems": blocking, "degraded": degraded, "pid": os.getpid()}

    def _write(self) -> None:
        self._last_write = self.clock()
        if self.path is None:
            return
        directory = os.path.dirname(self.path) or "."
        try:
            # Write then rename: the probe never reads half a file, and the rename is the beat (a new mtime).
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=".heartbeat-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(self.state(), out)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._write_failed = False
        except OSError as exc:  # a full or read-only /tmp: the probe will report it, the agent keeps working
            if not self._write_failed:
                log.warning("cannot write heartbeat file %s: %s", self.path, exc)
            self._write_failed = True


def read_heartbeat(path: str, *, now: float | None = None) -> tuple[float, dict[str, Any] | None]:
    """(age in seconds, content) of a heartbeat file; the content is None when it is not a heartbeat's JSON.

    Raises OSError when there is no file.
    """
    age_s = (time.time() if now is None else now) - os.stat(path).st_mtime
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return age_s, None
    return age_s, content if isinstance(content, dict) else None
