"""`bidengine dead-letters list|show|replay|purge` against a real Redis, through the command line's own entry."""

from __future__ import annotations

import json

import pytest
import redis as sync_redis

from bidengine import cli
from schema import keys
from schema.events import DeadLetter


@pytest.fixture
def letters(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[sync_redis.Redis, list[str]]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    ids = []
    for n in range(3):
        letter = DeadLetter(
            f"{n + 1}-0", keys.BID_REQUESTS, f"reason {n}", {"n": str(n)}, group="pricing", deliveries=5
        )
        ids.append(client.xadd(keys.BIDS_DEAD_LETTER, letter.to_fields()))  # type: ignore[arg-type]
    audit = DeadLetter("9-0", keys.BIDS_PRICED, "audit reason", {"bid_id": "1"}, group="audit", deliveries=5)
    ids.append(client.xadd(keys.AUDIT_DEAD_LETTER, audit.to_fields()))  # type: ignore[arg-type]
    return client, ids


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["dead-letters", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_list_shows_both_agents_dead_letters(
    letters: tuple[sync_redis.Redis, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, ids = letters
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert "bids:dead: 3 dead letters" in out
    assert "audit:dead: 1 dead letter\n" in out
    assert out.index(ids[2]) < out.index(ids[1])  # newest first
    assert "group=pricing deliveries=5  reason 2" in out

    status, out, _ = run(capsys, "list", "--stream", "bids:dead", "--limit", "1", "--json")
    assert status == 0
    [line] = out.splitlines()
    assert json.loads(line) == {
        "stream": "bids:dead",
        "id": ids[2],
        "source": "bids:requests",
        "group": "pricing",
        "entry_id": "3-0",
        "deliveries": 5,
        "reason": "reason 2",
        "fields": {"n": "2"},
    }


def test_show_prints_a_letter_in_full(
    letters: tuple[sync_redis.Redis, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, ids = letters
    status, out, _ = run(capsys, "show", "--stream", "audit:dead", ids[3])
    assert status == 0
    assert json.loads(out)["reason"] == "audit reason"
    status, out, _ = run(capsys, "show", ids[1])  # both streams searched (ids may repeat across streams)
    assert status == 0
    assert '"reason": "reason 1"' in out
    status, _, err = run(capsys, "show", "0-1")
    assert status == 1
    assert "no dead letter 0-1" in err


def test_replay_puts_entries_back_and_reports_what_was_missing(
    letters: tuple[sync_redis.Redis, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, ids = letters
    status, out, err = run(capsys, "replay", "--stream", "bids:dead", ids[0], "0-1")
    assert status == 1  # one id was not there
    assert f"replayed {ids[0]} ->" in out
    assert "no dead letter 0-1" in err
    assert [fields for _, fields in client.xrange(keys.BID_REQUESTS)] == [{"n": "0"}]
    status, out, _ = run(capsys, "replay", "--stream", "bids:dead", "--all")
    assert status == 0
    assert "2 replayed, 0 missing, 0 failed" in out
    assert client.xlen(keys.BIDS_DEAD_LETTER) == 0
    assert client.xlen(keys.AUDIT_DEAD_LETTER) == 1  # the other stream is untouched


def test_purge_all_needs_a_confirmation(
    letters: tuple[sync_redis.Redis, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, ids = letters
    status, _, err = run(capsys, "purge", "--stream", "bids:dead", "--all")
    assert status == 2
    assert "--yes" in err
    assert client.xlen(keys.BIDS_DEAD_LETTER) == 3
    status, _, err = run(capsys, "purge", "--stream", "bids:dead")
    assert status == 2
    assert "give letter ids or --all" in err
    status, out, _ = run(capsys, "purge", "--stream", "bids:dead", ids[0])
    assert (status, out.strip()) == (0, "purged 1 of 1 dead letters from bids:dead")
    status, out, _ = run(capsys, "purge", "--stream", "bids:dead", "--all", "--yes")
    assert (status, out.strip()) == (0, "purged 2 dead letters from bids:dead")
    assert client.xlen(keys.BIDS_DEAD_LETTER) == 0
