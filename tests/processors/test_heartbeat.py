"""The agents' liveness and readiness: the heartbeat file (its age, its content), and `bidengine probe` reading it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from processors.app import create_app
from processors.bridge import group_agent
from processors.heartbeat import Heartbeat, heartbeat_path, read_heartbeat
from redis_streams.groups import Batch
from tests.support import group_config_for_tests

STREAM = "test:heartbeat"
ROOT = Path(__file__).resolve().parents[2]


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


async def touches_during(path: Path, seconds: float) -> int:
    """How many times the file's mtime changed while watching it for `seconds`."""
    changes, last = 0, mtime_ns(path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = mtime_ns(path)
        if now != last:
            changes, last = changes + 1, now
    return changes


async def test_heartbeat_beats_while_reading_and_stops_when_the_handler_hangs(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "agent.alive"
    read_ahead = 1
    app = create_app("test-heartbeat")
    handling, release = asyncio.Event(), asyncio.Event()

    async def handler(_batch: Batch) -> None:
        handling.set()
        await release.wait()

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    config = group_config_for_tests(
        STREAM,
        "g",
        "c",
        batch_size=1,
        block_ms=10,
        read_ahead=read_ahead,
        heartbeat_file=str(heartbeat),
    )
    group_agent(app, client, config, handler, name="hang")
    await app.start()
    try:
        # Empty reads keep the loop, and so the heartbeat, going: created, then touched once a second.
        for _ in range(100):
            if heartbeat.exists():
                break
            await asyncio.sleep(0.05)
        assert heartbeat.exists()
        assert 2 <= await touches_during(heartbeat, 2.5) <= 3

        # One batch held by the handler, `read_ahead` in the channel, one more waiting to be sent: the loop stops.
        for i in range(read_ahead + 3):
            await redis.xadd(STREAM, {"n": str(i)})
        await asyncio.wait_for(handling.wait(), timeout=10)
        await asyncio.sleep(1.2)  # a touch already due when the loop blocked lands in this second
        assert await touches_during(heartbeat, 2.5) == 0, "a hung handler must stop the heartbeat"

        release.set()
        assert await touches_during(heartbeat, 1.5) >= 1, "the heartbeat resumes once batches are taken again"
    finally:
        release.set()
        await app.stop()
        await client.aclose()


def probe(role: str, tmpdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-m", "bidengine.cli", "probe", role, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("role", ["pricing-agent", "audit-agent"])
def test_probe_reads_the_heartbeat_age(role: str, tmp_path: Path) -> None:
    missing = probe(role, tmp_path)
    assert missing.returncode == 1
    assert "no heartbeat" in missing.stderr

    heartbeat = tmp_path / f"bidengine-{role}.alive"
    heartbeat.touch()
    fresh = probe(role, tmp_path)
    assert fresh.returncode == 0, fresh.stderr

    past = time.time() - 31
    os.utime(heartbeat, (past, past))
    old = probe(role, tmp_path)
    assert old.returncode == 1
    # At least 31 s: the probe process may take a moment to start on a loaded machine.
    age = re.search(r"is (\d+)s old \(max 30s\)", old.stderr)
    assert age is not None, old.stderr
    assert int(age[1]) >= 31
    assert probe(role, tmp_path, "--max-age-s", "60").returncode == 0


def test_heartbeat_path_is_in_the_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert heartbeat_path("audit-agent") == str(tmp_path / "bidengine-audit-agent.alive")


def test_probe_imports_nothing_heavy() -> None:
    code = (
        "import sys; from bidengine.cli import main; main(['probe', 'pricing-agent']);"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'faust', 'mode', 'redis', 'asyncpg'});"
        "print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_heartbeat_says_why_the_agent_is_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "bidengine-pricing-agent.alive"
    now = [100.0]
    heartbeat = Heartbeat(str(path), clock=lambda: now[0])
    heartbeat.beat()
    assert read_heartbeat(str(path))[1] == {"ready": True, "problems": [], "degraded": [], "pid": os.getpid()}

    heartbeat.report("pricing reader", "reading bids:requests: ConnectionError: refused")
    heartbeat.report("trim", "trimming: ConnectionError: refused", readiness=False)
    _, state = read_heartbeat(str(path))  # written at once on a change, not a second later
    assert state is not None
    assert state["ready"] is False
    assert state["problems"] == ["pricing reader: reading bids:requests: ConnectionError: refused"]
    assert state["degraded"] == ["trim: trimming: ConnectionError: refused"]
    result = probe("pricing-agent", tmp_path, "--ready")
    assert result.returncode == 1
    assert "not ready: pricing reader: reading bids:requests: ConnectionError: refused" in result.stderr
    assert probe("pricing-agent", tmp_path).returncode == 0  # alive all the same: no restart

    heartbeat.report("pricing reader", None)
    assert probe("pricing-agent", tmp_path, "--ready").returncode == 0  # degraded only: still ready
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bidengine-pricing-agent.alive"]  # no temporary left


def test_beats_are_written_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "agent.alive"
    now = [0.0]
    heartbeat = Heartbeat(str(path), clock=lambda: now[0])
    heartbeat.beat()
    first = path.stat().st_mtime_ns
    os.utime(path, ns=(first - 10**9, first - 10**9))
    heartbeat.beat()  # same second: not rewritten
    assert path.stat().st_mtime_ns == first - 10**9
    now[0] = 1.5
    heartbeat.beat()
    assert path.stat().st_mtime_ns > first - 10**9


def test_probe_ready_refuses_a_heartbeat_without_readiness(tmp_path: Path) -> None:
    (tmp_path / "bidengine-audit-agent.alive").touch()
    result = probe("audit-agent", tmp_path, "--ready")
    assert result.returncode == 1
    assert "does not say whether the agent is ready" in result.stderr


def test_an_unwritable_heartbeat_is_reported_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = Heartbeat(str(tmp_path / "missing-dir" / "agent.alive"), min_interval_s=0)
    for _ in range(3):
        heartbeat.beat()
    assert len([r for r in caplog.records if "cannot write heartbeat" in r.getMessage()]) == 1
