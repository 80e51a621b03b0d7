"""What the console's handlers find on the application (typed aiohttp AppKeys)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from console.backends import Backends
from console.ratelimit import LoginLimiter
from console.security import UserCache
from console.users import Passwords
from schema.settings import Settings

SETTINGS: Final = web.AppKey("settings", Settings)
BACKENDS: Final = web.AppKey("backends", Backends)
PASSWORDS: Final = web.AppKey("passwords", Passwords)
LIMITER: Final = web.AppKey("limiter", LoginLimiter)
USERS: Final = web.AppKey("users", UserCache)
