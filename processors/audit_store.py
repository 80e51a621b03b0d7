"""The audit agent's recorder: counts each bid once in the windowed aggregates, flags it once, acknowledges it.

One Lua script per batch (one EVALSHA per `MAX_BIDS_PER_CALL` bids, all sent in one write: one round trip)
does, atomically: for every bid, set its bit in `audit:seen:{R}` (one `BITFIELD ... SET u1 <offset> 1` per id
range, which answers each bit's old value); for the bids whose bit was 0, bump the day's overall and
per-product counters (`schema.audit`) and, when flagged, `XADD audit:flags`; then `XACK` the batch's entries.
Redis runs a script alone, and refuses one that would exceed `maxmemory` before its first write.

Why each bid is counted and flagged exactly once
-----------------------------------------------
The state is one bit per bid id (`audit:seen:{R}`, a bitmap per range of `SEEN_KEY_IDS` consecutive ids,
`schema.audit.seen_position`). A bid's counters and its flag are written by the same script invocation that
turns its bit from 0 to 1, and only by it. A bit never goes back to 0 while its key exists. So:

* A redelivery (the same entry read again, an entry republished for the same bid, the same bid twice in one
  batch) finds its bit set and counts nothing; the old bit, as the write of the new one answers it, is the
  only test: there is no read-then-write window.
* Two agents handling overlapping batches at the same time: their scripts run one after the other, never
  interleaved, so whichever runs second sees the first one's bits. Which agent counts a bid does not matter;
  that exactly one does, does.
* A crash between the write and the acknowledgement cannot happen: the `XACK` is inside the same script (the
  last one, when a batch larger than MAX_BIDS_PER_CALL is split: bids of the earlier calls are then marked
  before their entries are acknowledged, and a redelivery finds them marked, as below). If
  the reply is lost (the connection drops, the agent dies after sending), the entries are redelivered or the
  batch is retried; by then every bit of that batch is set, so the retry counts nothing and acknowledges
  again (XACK of acknowledged entries is a no-op). The same holds for an agent of the previous version, whose
  XACK came after its script: what it wrote is seen, see "upgrade" below.
* Nothing is lost: a bid is acknowledged only by a script that either counted it or found it counted; an
  error before the first write applies nothing and the batch is retried. (A script error after its first
  write could only come from an operator putting a key of another type under an audit name: the bids already
  marked would then be counted nowhere, never twice.)

What the state must outlive. A redelivered bid is counted only if its UTC day is at most MAX_EVENT_AGE_DAYS
older than the agent's today (older events count nowhere, by design), i.e. it arrives before
`day(calculated_at) + MAX_EVENT_AGE_DAYS + 1 days`. Its bit was set at the first delivery, no earlier than
`calculated_at` minus the clock skew between PostgreSQL and the agent, and its key lives at least KEY_TTL_S
after that (every script that sets a bit in a key renews the key's expiry). With KEY_TTL_S =
MAX_EVENT_AGE_DAYS + 2 days, the bit outlives every redelivery that could still be counted as long as the
clocks are less than a day apart. The aggregates of a day get the same expiry after their last write, so they
outlive every event that can still be added to them.

Upgrade from the per-day sets. The previous version kept the counted ids in sets `audit:seen:{YYYY-MM-DD}`
with the same expiry. A bid whose bit is 0 is also looked up in its day's set while that key exists (one
EXISTS per day per script, SISMEMBER only then), so an entry counted by the old agent and redelivered to the
new one is not counted again. The sets are never written and are gone KEY_TTL_S after the upgrade.

Bounds. A seen key is created at its full size (`SEEN_KEY_BYTES`, 128 KiB for 1,048,320 ids: 1.0006 bits
per id measured) and lives KEY_TTL_S after its last bit was set: at 1,000 bids/s, 10 days of ids are about
108 MB. Money is summed in integer cents (HINCRBY), so totals are exact; a call carries at most
MAX_BIDS_PER_CALL bids whose deviations are below 2 * 10^12 cents each, so the script's sums stay below 2^53,
where Lua's doubles are exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from string import Template

from redis import asyncio as aioredis
from redis.exceptions import NoScriptError

from redis_streams.groups import Batch
from redis_streams.pipe import Command, execute_packed
from schema import audit
from schema.keys import AUDIT_FLAGS, BIDS_PRICED, audit_day_key, audit_products_key, audit_seen_key, audit_seen_set_key

MAX_BIDS_PER_CALL = 4_000
_VALUES_PER_BID = 5  # slot (day and id range, times 2, plus 1 when flagged), bit offset, bid id, product, cents
_UNPACKED_MAX = 4_000  # values per unpack() in the script: Lua's C stack holds ~8,000

_RECORD = Template("""
-- KEYS[1]: the stream whose entries are acknowledged; KEYS[2]: the flags stream;
-- day d = 1..ndays: KEYS[3d] overall hash, KEYS[3d+1] products hash, KEYS[3d+2] the previous version's set;
-- id range r = 1..: KEYS[3 ndays + 2 + r] its seen bitmap.
-- ARGV: group, flags maxlen, ttl, seen bytes, flagged_at, flag layout, ndays, nslots, nacks, nbids; the flag's
-- field names; 2 values per slot (day, range); the ids to acknowledge; $VALUES_PER_BID values per bid; the flag
-- values of each flagged bid.
local group, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
local seen_bytes, flagged_at, layout = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local ndays, nslots, nacks, nbids = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local nfields = string.len(layout)
local names_at = 11
local slots_at = names_at + nfields
local acks_at = slots_at + 2 * nslots
local bids_at = acks_at + nacks
local values_at = bids_at + $VALUES_PER_BID * nbids
local ranges_at = 3 * ndays + 2

local function unpacked_calls(command, key, fixed, args)
  -- `command key fixed... args...` in as many calls as unpack() allows; their replies, concatenated
  local replies = {}
  for first = 1, #args, $UNPACKED_MAX do
    local chunk = {command, key, unpack(fixed)}
    for j = first, math.min(first + $UNPACKED_MAX - 1, #args) do
      chunk[#chunk + 1] = args[j]
    end
    local reply = redis.call(unpack(chunk))
    if type(reply) == 'table' then
      for _, value in ipairs(reply) do
        replies[#replies + 1] = value
      end
    end
  end
  return replies
end

-- The flag entry's template: its names, the batch's time, and where each per-bid value goes.
local flag, value_at_field = {}, {}
local bid_field, product_field
for f = 1, nfields do
  flag[2 * f - 1] = ARGV[names_at + f - 1]
  local kind = string.sub(layout, f, f)
  if kind == 'v' then
    value_at_field[#value_at_field + 1] = 2 * f
  elseif kind == 'i' then
    bid_field = 2 * f
  elseif kind == 'p' then
    product_field = 2 * f
  else
    flag[2 * f] = flagged_at
  end
end
local values_per_flag = #value_at_field
local slot_day, slot_range = {}, {}
for s = 1, nslots do
  slot_day[s] = tonumber(ARGV[slots_at + 2 * s - 2])
  slot_range[s] = tonumber(ARGV[slots_at + 2 * s - 1])
end

-- 1. Mark every bid seen, one BITFIELD per id range: each SET answers the bit it replaced.
local marks, order = {}, {}
for i = 0, nbids - 1 do
  local slot = tonumber(ARGV[bids_at + $VALUES_PER_BID * i])
  local r = slot_range[math.floor(slot / 2)]
  if marks[r] == nil then
    marks[r] = {}
    order[r] = {}
    local key = KEYS[ranges_at + r]
    -- Created at its full size: growing it bit by bit would over-allocate (schema.audit.SEEN_KEY_BYTES).
    if redis.call('EXISTS', key) == 0 then
      redis.call('SET', key, string.rep('\\0', seen_bytes))
    end
  end
  local m = marks[r]
  m[#m + 1] = 'SET'
  m[#m + 1] = 'u1'
  m[#m + 1] = ARGV[bids_at + $VALUES_PER_BID * i + 1]
  m[#m + 1] = '1'
  order[r][#order[r] + 1] = i
end
local was_seen = {}
for r, m in pairs(marks) do
  local old_bits = unpacked_calls('BITFIELD', KEYS[ranges_at + r], {}, m)
  local changed = false
  for j, i in ipairs(order[r]) do
    was_seen[i] = old_bits[j] == 1
    changed = changed or not was_seen[i]
  end
  if changed then
    redis.call('EXPIRE', KEYS[ranges_at + r], ttl)
  end
end

-- 2. Count the bids that were not seen, and flag them.
local old_set = {}
local totals, products = {}, {}
local counted, flagged = 0, 0
local value_at = values_at
for i = 0, nbids - 1 do
  local at = bids_at + $VALUES_PER_BID * i
  local slot = tonumber(ARGV[at])
  local is_flagged = slot % 2 == 1
  local d = slot_day[math.floor(slot / 2)]
  local new = not was_seen[i]
  if new then
    if old_set[d] == nil then
      old_set[d] = redis.call('EXISTS', KEYS[3 * d + 2]) == 1
    end
    if old_set[d] and redis.call('SISMEMBER', KEYS[3 * d + 2], ARGV[at + 2]) == 1 then
      new = false
    end
  end
  if new then
    local cents = tonumber(ARGV[at + 4])
    local day = totals[d]
    if day == nil then
      day = {0, 0, 0, 0}
      totals[d] = day
      products[d] = {}
    end
    local product = products[d][ARGV[at + 3]]
    if product == nil then
      product = {0, 0, 0}
      products[d][ARGV[at + 3]] = product
    end
    day[1] = day[1] + 1
    day[2] = day[2] + cents
    product[1] = product[1] + 1
    product[3] = product[3] + cents
    counted = counted + 1
    if is_flagged then
      day[3] = day[3] + 1
      day[4] = day[4] + cents
      product[2] = product[2] + 1
      flagged = flagged + 1
      for v = 1, values_per_flag do
        flag[value_at_field[v]] = ARGV[value_at + v - 1]
      end
      flag[bid_field] = ARGV[at + 2]
      flag[product_field] = ARGV[at + 3]
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(flag))
    end
  end
  if is_flagged then
    value_at = value_at + values_per_flag
  end
end

local function int(n)
  return string.format('%d', n)  -- tostring() would write 1e+15
end
for d, day in pairs(totals) do
  local overall = KEYS[3 * d]
  redis.call('HINCRBY', overall, '$REVIEWED', int(day[1]))
  redis.call('HINCRBY', overall, '$DEVIATION_CENTS', int(day[2]))
  if day[3] > 0 then
    redis.call('HINCRBY', overall, '$FLAGGED', int(day[3]))
    redis.call('HINCRBY', overall, '$FLAGGED_DEVIATION_CENTS', int(day[4]))
  end
  local per_product = KEYS[3 * d + 1]
  for product, counts in pairs(products[d]) do
    redis.call('HINCRBY', per_product, product .. '$REVIEWED_SUFFIX', int(counts[1]))
    redis.call('HINCRBY', per_product, product .. '$DEVIATION_SUFFIX', int(counts[3]))
    if counts[2] > 0 then
      redis.call('HINCRBY', per_product, product .. '$FLAGGED_SUFFIX', int(counts[2]))
    end
  end
  redis.call('EXPIRE', overall, ttl)
  redis.call('EXPIRE', per_product, ttl)
end

-- 3. Acknowledge the batch's entries, with what they caused.
local ids = {}
for j = 0, nacks - 1 do
  ids[#ids + 1] = ARGV[acks_at + j]
end
unpacked_calls('XACK', KEYS[1], {group}, ids)
return {counted, flagged}
""").substitute(
    VALUES_PER_BID=_VALUES_PER_BID,
    UNPACKED_MAX=_UNPACKED_MAX,
    REVIEWED=audit.REVIEWED,
    DEVIATION_CENTS=audit.DEVIATION_CENTS,
    FLAGGED=audit.FLAGGED,
    FLAGGED_DEVIATION_CENTS=audit.FLAGGED_DEVIATION_CENTS,
    REVIEWED_SUFFIX=audit.product_field_suffix("r"),
    FLAGGED_SUFFIX=audit.product_field_suffix("f"),
    DEVIATION_SUFFIX=audit.product_field_suffix("d"),
)
_RECORD_SHA = hashlib.sha1(_RECORD.encode()).hexdigest()  # noqa: S324  # the name Redis gives the script

# Where each value of a flag entry comes from: the bid's id, its product, the batch's time, or flag_values().
_FLAG_LAYOUT = "".join(
    "i" if name == "bid_id" else "p" if name == "product_id" else "t" if name == "flagged_at" else "v"
    for name in audit.FLAG_FIELDS
)
assert _FLAG_LAYOUT.count("v") == len(audit.FLAG_VALUE_FIELDS)  # a change of FLAG_FIELDS must reach the layout


@dataclass(slots=True)
class Recording:
    """One batch's reviewed bids, as the script takes them: flat columns, no object per bid."""

    slots: dict[tuple[str, int], int] = field(default_factory=dict)  # (ISO day, id range) -> 2 * its index
    bids: list[int] = field(default_factory=list)  # _VALUES_PER_BID values per bid
    flags: list[str] = field(default_factory=list)  # the FLAG_VALUE_FIELDS values of each flagged bid, in bid order

    def add(self, bid_id: int, day: str, product_id: int, deviation_cents: int, flag: Sequence[str] | None) -> None:
        """A bid to count once: |adjusted - current| in cents; `flag` = its flag_values() when flagged."""
        id_range, offset = divmod(bid_id, audit.SEEN_KEY_IDS)
        slot = self.slots.get((day, id_range)) or self._new_slot(day, id_range)
        if flag is None:
            self.bids += (slot, offset, bid_id, product_id, deviation_cents)
        else:
            self.bids += (slot + 1, offset, bid_id, product_id, deviation_cents)
            self.flags += flag

    def _new_slot(self, day: str, id_range: int) -> int:
        slot = self.slots[day, id_range] = 2 * (len(self.slots) + 1)
        return slot

    def __len__(self) -> int:
        return len(self.bids) // _VALUES_PER_BID


@dataclass(frozen=True, slots=True)
class Recorded:
    counted: int  # bids counted now (their bit was 0)
    flagged: int  # of those, flagged: one audit:flags entry each


class AuditStore:
    """Records a batch's bids and acknowledges its entries, in one round trip (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, flags_maxlen: int) -> None:
        self.redis = redis
        self.flags_maxlen = flags_maxlen

    async def record(self, recording: Recording, *, flagged_at: str, acknowledge: Batch | None = None) -> Recorded:
        """Count each new bid of `recording`, then XACK `acknowledge`'s entries (all of them: the entries that
        were invalid or too old too), atomically with the last bids. `flagged_at` goes in every flag entry."""
        if not len(recording) and not acknowledge:
            return Recorded(0, 0)
        replies = await execute_packed(self.redis, self._calls(recording, flagged_at, acknowledge, "EVALSHA"))
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # A restarted or flushed Redis forgot the script: send it whole (already applied calls count nothing).
            replies = await execute_packed(self.redis, self._calls(recording, flagged_at, acknowledge, "EVAL"))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return Recorded(sum(int(reply[0]) for reply in replies), sum(int(reply[1]) for reply in replies))

    def _calls(self, recording: Recording, flagged_at: str, acknowledge: Batch | None, verb: str) -> list[Command]:
        days: dict[str, int] = {}
        ranges: dict[int, int] = {}
        slot_indexes: list[int] = []
        for day, id_range in recording.slots:  # in slot order
            slot_indexes += (days.setdefault(day, len(days) + 1), ranges.setdefault(id_range, len(ranges) + 1))
        keys = [acknowledge.stream if acknowledge is not None else BIDS_PRICED, AUDIT_FLAGS]
        for utc_day in map(date.fromisoformat, days):
            keys += (audit_day_key(utc_day), audit_products_key(utc_day), audit_seen_set_key(utc_day))
        keys += map(audit_seen_key, ranges)
        group = acknowledge.group if acknowledge is not None else ""
        ack_ids = [entry.id for entry in acknowledge] if acknowledge is not None else []
        header = (group, self.flags_maxlen, audit.KEY_TTL_S, audit.SEEN_KEY_BYTES, flagged_at, _FLAG_LAYOUT, len(days))
        script = _RECORD_SHA if verb == "EVALSHA" else _RECORD
        calls: list[Command] = []
        bids, flags = recording.bids, recording.flags
        per_call = MAX_BIDS_PER_CALL * _VALUES_PER_BID
        flags_start = 0
        for start in range(0, max(len(bids), 1), per_call):
            chunk = bids[start : start + per_call]
            flags_end = flags_start + sum(slot & 1 for slot in chunk[::_VALUES_PER_BID]) * len(audit.FLAG_VALUE_FIELDS)
            acks = ack_ids if start + per_call >= len(bids) else []  # the last call acknowledges
            calls.append(
                (
                    verb,
                    script,
                    len(keys),
                    *keys,
                    *header,
                    len(slot_indexes) // 2,
                    len(acks),
                    len(chunk) // _VALUES_PER_BID,
                    *audit.FLAG_FIELDS,
                    *slot_indexes,
                    *acks,
                    *chunk,
                    *flags[flags_start:flags_end],
                )
            )
            flags_start = flags_end
        return calls
