"""Revocation checks against Redis with one pipelined MGET per authenticated request.

redis.asyncio costs ~130 us of client CPU per command; the MGETs go over the gateway's shared
pipelined connection (`gateway.resp`, hiredis parses replies).
Pub/sub on `<prefix>revocations` (through redis.asyncio, off the hot path) feeds local
denylists so a revoked token is refused even when Redis is briefly unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway.resp import RespClient, command

__all__ = ["MGetClient", "RevocationListener", "mget_command"]

_log = structlog.get_logger("portico.gateway.revocation")


def mget_command(keys: list[bytes] | tuple[bytes, ...]) -> bytes:
    """`MGET keys` in RESP, for callers that send the same MGET many times."""
    return command(b"MGET", *keys)


class MGetClient:
    """MGET over the gateway's shared pipelined Redis connection (`gateway.resp.RespClient`):
    revocation checks and cache lookups, in the same writes as the rate limiter's EVALSHAs."""

    def __init__(self, redis: str | RespClient, *, timeout: float = 0.5) -> None:
        self.client = (
            redis if isinstance(redis, RespClient) else RespClient.from_url(redis, timeout=timeout)
        )
        self.timeout = timeout

    def mget(
        self, keys: tuple[bytes, ...], *, command: bytes = b""
    ) -> Awaitable[list[bytes | None]]:
        """MGET `keys` (`command`: the same, pre-serialised by `mget_command`); the awaitable
        raises ConnectionError/TimeoutError when Redis does not answer in time. Connected, it is
        the reply's future itself: no coroutine frame on the hot path."""
        payload = command or mget_command(keys)
        reply: Awaitable[list[bytes | None]] = self.client.execute(payload, timeout=self.timeout)
        return reply

    def close(self) -> None:
        self.client.close()


class RevocationListener:
    """Subscribes to the revocation channel and calls `on_message(kind, value)` per message."""

    def __init__(self, redis_url: str, channel: str,
                 on_message: Callable[[str, str], None]) -> None:  # fmt: skip
        self.redis_url = redis_url
        self.channel = channel
        self.on_message = on_message
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            client = aioredis.from_url(self.redis_url, socket_connect_timeout=1)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.connected.set()
                    async for message in pubsub.listen():
                        self._handle(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: retry; local caches keep their TTLs
                _log.warning("revocation channel lost", error=type(exc).__name__)
            finally:
                self.connected.clear()
                await client.aclose()
            # Whatever was published while we were away is lost: treat everything as stale.
            self.on_message("*", "")
            await asyncio.sleep(1.0)

    def _handle(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
            kind, value = str(message["kind"]), str(message["value"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            _log.warning("malformed revocation message")
            return
        self.on_message(kind, value)

    def ctx(self) -> Callable[[web.Application], AsyncIterator[None]]:
        async def ctx(_: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(self.run(), name="gateway-revocations")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        return ctx
