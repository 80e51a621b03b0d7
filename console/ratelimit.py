"""Login rate limits in Redis: failed logins per user name, attempts per client address, per fixed window.

Each counter is one key (`console:login:user:<sha256 of the name>`, `console:login:addr:<address>`) created
with a TTL of one window by the same script that increments it, so a counter can never outlive its window.
Unknown names are counted like real ones (no hint of which names exist). The user counter is cleared by a
successful login; the address counter is not (it also limits password spraying across many names).

Bytes: ~90 per counter; at most one per name and one per address tried within the last window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis import asyncio as aioredis

from schema.keys import CONSOLE_LOGIN_ADDRESS_PREFIX, CONSOLE_LOGIN_USER_PREFIX
from schema.settings import Settings

_INCREMENT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('TTL', KEYS[1])}
"""


def user_key(name: str) -> str:
    # Hashed: a name is client input of any length and alphabet; the key stays short and printable.
    return CONSOLE_LOGIN_USER_PREFIX + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def address_key(address: str) -> str:
    return CONSOLE_LOGIN_ADDRESS_PREFIX + address[:64]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


class LoginLimiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.window_s = settings.console_login_window_s
        self.max_user_failures = settings.console_login_max_failures_per_user
        self.max_address_attempts = settings.console_login_max_attempts_per_address
        self._increment = redis.register_script(_INCREMENT)

    async def attempt(self, name: str, address: str) -> Verdict:
        """Count an attempt from `address`; refuse it when the address or the name is over its limit."""
        count, ttl = await self._increment(keys=[address_key(address)], args=[self.window_s])
        if int(count) > self.max_address_attempts:
            return Verdict(False, max(int(ttl), 1))
        failures = await self.redis.get(user_key(name))
        if failures is not None and int(failures) >= self.max_user_failures:
            ttl = await self.redis.ttl(user_key(name))
            return Verdict(False, max(int(ttl), 1))
        return Verdict(True)

    async def failed(self, name: str) -> None:
        await self._increment(keys=[user_key(name)], args=[self.window_s])

    async def succeeded(self, name: str) -> None:
        await self.redis.delete(user_key(name))
