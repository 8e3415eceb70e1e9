"""Revocation state in Redis, in the layout the gateway reads (see the brief/DESIGN):

<prefix>revoked:jti:<jti>          TTL = the token's remaining life
<prefix>revoked:sid:<sid>          TTL = access-token lifetime + 60 s
<prefix>user:<user_id>:not_before  unix seconds; tokens with iat < value are dead
PUBLISH <prefix>revocations {"kind": "jti"|"sid"|"user"|"apikey", "value": "..."}
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from services.users.service.common import redis_required

__all__ = ["Revocations"]


class Revocations:
    def __init__(self, redis: Any, *, prefix: str, access_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = access_seconds + 60

    @property
    def channel(self) -> str:
        return f"{self.prefix}revocations"

    async def _publish(self, *messages: tuple[str, str]) -> None:
        for kind, value in messages:
            await self.redis.publish(self.channel, orjson.dumps({"kind": kind, "value": value}))
        # Gateways that trust a checked token until its revocation message arrives
        # (`revocation_check=feed`) want the message on their sockets before this revocation is
        # answered. Redis writes a PUBLISH's reply before its messages, in the same pass; a
        # second round trip is answered in a later pass, after every subscriber's copy was
        # written. That narrows the window (it does not close it: the network may still delay
        # the bytes); the default gateway check, in Redis on every request, needs none of it.
        await self.redis.ping()

    @redis_required("revocation is temporarily unavailable")
    async def revoke_token(self, jti: str, exp: int | None) -> None:
        """That one access token is dead until it would have expired anyway."""
        remaining = self.ttl if exp is None else max(1, exp - int(time.time()) + 60)
        await self.redis.set(f"{self.prefix}revoked:jti:{jti}", b"1", ex=remaining)
        await self._publish(("jti", jti))

    @redis_required("revocation is temporarily unavailable")
    async def revoke_sessions(self, session_ids: list[str]) -> None:
        """Every access token of these sessions is dead."""
        if not session_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(f"{self.prefix}revoked:sid:{sid}", b"1", ex=self.ttl)
            await pipe.execute()
        await self._publish(*(("sid", sid) for sid in session_ids))

    @redis_required("revocation is temporarily unavailable")
    async def revoke_user(self, user_id: str) -> None:
        """Every access token issued to the user before now is dead."""
        await self.redis.set(
            f"{self.prefix}user:{user_id}:not_before", str(int(time.time())), ex=self.ttl
        )
        await self._publish(("user", user_id))

    @redis_required("revocation is temporarily unavailable")
    async def revoke_api_key(self, key_id: str) -> None:
        """Gateways drop their cached resolution of the key."""
        await self._publish(("apikey", key_id))
