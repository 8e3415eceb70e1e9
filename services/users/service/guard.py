"""Brute-force defences for login: per-IP throttling and per-account exponential lockout.

Both live in Redis. The account state is keyed by a digest of the normalized email, whether or
not the account exists, so lockout behaves the same for unknown emails (no enumeration).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from libs.common.errors import AccountLocked, RateLimited
from services.users.service.common import redis_required

__all__ = ["LoginGuard"]


# KEYS[1] = state hash; ARGV = now, threshold, base, cap. Returns seconds locked (0 = not locked).
_RECORD_FAILURE = """
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
local now, threshold = tonumber(ARGV[1]), tonumber(ARGV[2])
local base, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local locked = 0
if fails >= threshold then
  local level = redis.call('HINCRBY', KEYS[1], 'level', 1)
  locked = math.min(base * 2 ^ (level - 1), cap)
  redis.call('HSET', KEYS[1], 'until', now + locked, 'fails', 0)
end
redis.call('EXPIRE', KEYS[1], math.max(cap * 2, 86400))
return locked
"""


class LoginGuard:
    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        ip_max_attempts: int,
        ip_window: int,
        threshold: int,
        base_seconds: int,
        max_seconds: int,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ip_max_attempts = ip_max_attempts
        self.ip_window = ip_window
        self.threshold = threshold
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self._record = redis.register_script(_RECORD_FAILURE)

    def _account_key(self, email: str) -> str:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        return f"{self.prefix}users:lockout:{digest}"

    @redis_required("sign-in is temporarily unavailable")
    async def throttle_ip(self, ip: str | None) -> None:
        """Count a login attempt from `ip`; 429 beyond the window's budget."""
        if not ip:
            return
        window = int(time.time()) // self.ip_window
        key = f"{self.prefix}users:login_ip:{ip}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.ip_window + 1)
            count, _ = await pipe.execute()
        if int(count) > self.ip_max_attempts:
            retry = self.ip_window - int(time.time()) % self.ip_window
            raise RateLimited(
                "too many login attempts from this address",
                headers={"Retry-After": str(max(retry, 1))},
            )

    @redis_required("sign-in is temporarily unavailable")
    async def check_locked(self, email: str) -> None:
        """423 with Retry-After while the account is locked."""
        until = await self.redis.hget(self._account_key(email), "until")
        if until is not None:
            remaining = int(float(until) - time.time())
            if remaining > 0:
                raise self.locked(remaining)

    def locked(self, seconds: int) -> AccountLocked:
        return AccountLocked(
            "too many failed logins; try again later",
            headers={"Retry-After": str(max(int(seconds), 1))},
        )

    @redis_required("sign-in is temporarily unavailable")
    async def record_failure(self, email: str) -> int:
        """Count a failure; the lock duration in seconds when this one locked the account."""
        locked = await self._record(
            keys=[self._account_key(email)],
            args=[int(time.time()), self.threshold, self.base_seconds, self.max_seconds],
        )
        return int(locked)

    @redis_required("sign-in is temporarily unavailable")
    async def reset(self, email: str) -> None:
        await self.redis.delete(self._account_key(email))
