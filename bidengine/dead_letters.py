"""`bidengine dead-letters list|show|replay|purge`: on-call's view of the agents' dead-letter streams.

`bids:dead` holds the requests the pricing agent gave up on, `audit:dead` the priced bids the audit agent gave
up on (docs/streams.md). Replaying puts a letter's original entry back on its stream, where its agent handles
it again, idempotently: a bid already stored stores nothing new, a bid already counted is not counted again.
Replay and purge act on the letters present when they start (a replayed entry that fails again comes back as a
new letter and is left for the next look).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from redis import asyncio as aioredis

from redis_streams import dead_letters
from redis_streams.client import connect
from redis_streams.dead_letters import ReplayResult, StoredDeadLetter
from schema import keys
from schema.settings import RedisSettings


def main(settings: RedisSettings, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    if args.action in ("replay", "purge"):
        if bool(args.ids) == bool(args.all):
            print(f"bidengine dead-letters {args.action}: give letter ids or --all (not both)", file=sys.stderr)
            return 2
        if args.action == "purge" and args.all and not args.yes:
            print("bidengine dead-letters purge --all deletes every letter for good: add --yes", file=sys.stderr)
            return 2
    return asyncio.run(_run(settings, args, out or sys.stdout))


async def _run(settings: RedisSettings, args: argparse.Namespace, out: TextIO) -> int:
    # No command retries: a replay whose reply was lost must not be reported as "missing" by a second try.
    redis = connect(settings.redis_url, settings, retry_commands=False, client_name="bidengine-cli")
    try:
        action = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}[args.action]
        return await action(redis, args, out)
    finally:
        await redis.aclose()


def _streams(args: argparse.Namespace) -> list[str]:
    return [args.stream] if args.stream else list(keys.DEAD_LETTER_STREAMS)


def _as_json(stream: str, stored: StoredDeadLetter) -> dict[str, Any]:
    letter = stored.letter
    if letter is None:
        return {"stream": stream, "id": stored.id, "problem": stored.problem}
    return {
        "stream": stream,
        "id": stored.id,
        "source": letter.stream,
        "group": letter.group,
        "entry_id": letter.entry_id,
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "fields": dict(letter.fields),
    }


async def _list(redis: aioredis.Redis, args: argparse.Namespace, out: TextIO) -> int:
    for stream in _streams(args):
        letters = await dead_letters.list_letters(
            redis, stream, limit=args.limit, newest_first=not args.oldest_first, before=args.before
        )
        if args.json:
            for stored in letters:
                print(json.dumps(_as_json(stream, stored)), file=out)
            continue
        total = await dead_letters.count(redis, stream)
        print(f"{stream}: {total} dead letter{'s' if total != 1 else ''}", file=out)
        for stored in letters:
            letter = stored.letter
            if letter is None:
                print(f"  {stored.id}  (undecodable: {stored.problem})", file=out)
                continue
            group = letter.group or "?"
            print(
                f"  {stored.id}  {letter.stream} {letter.entry_id} group={group} deliveries={letter.deliveries}"
                f"  {letter.reason}",
                file=out,
            )
        if len(letters) < total:
            print(f"  ... {total - len(letters)} more (--limit, --before {letters[-1].id})", file=out)
    return 0


async def _show(redis: aioredis.Redis, args: argparse.Namespace, out: TextIO) -> int:
    missing = 0
    for entry_id in args.ids:
        found = False
        for stream in _streams(args):
            stored = await dead_letters.show(redis, stream, entry_id)
            if stored is not None:
                found = True
                print(json.dumps(_as_json(stream, stored), indent=2), file=out)
        if not found:
            missing += 1
            print(f"no dead letter {entry_id} in {', '.join(_streams(args))}", file=sys.stderr)
    return 1 if missing else 0


async def _replay(redis: aioredis.Redis, args: argparse.Namespace, out: TextIO) -> int:
    result: ReplayResult
    if args.all:
        result = await dead_letters.replay_all(redis, args.stream)
    else:
        result = await dead_letters.replay(redis, args.stream, args.ids)
    for letter_id, new_id in result.replayed.items():
        print(f"replayed {letter_id} -> {new_id}", file=out)
    for letter_id in result.missing:
        print(f"no dead letter {letter_id} in {args.stream} (purged or replayed already)", file=sys.stderr)
    for letter_id, why in result.failed.items():
        print(f"cannot replay {letter_id}: {why} (left in place)", file=sys.stderr)
    print(f"{len(result.replayed)} replayed, {len(result.missing)} missing, {len(result.failed)} failed", file=out)
    return 1 if result.missing or result.failed else 0


async def _purge(redis: aioredis.Redis, args: argparse.Namespace, out: TextIO) -> int:
    if args.all:
        removed = await dead_letters.purge_all(redis, args.stream)
        print(f"purged {removed} dead letters from {args.stream}", file=out)
        return 0
    removed = await dead_letters.purge(redis, args.stream, args.ids)
    print(f"purged {removed} of {len(args.ids)} dead letters from {args.stream}", file=out)
    return 0 if removed == len(args.ids) else 1
