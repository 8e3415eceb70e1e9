"""Revocation checks against Redis with one pipelined MGET per authenticated request.

redis.asyncio costs ~130 us of client CPU per command; the hot path only ever needs MGET, so this
module speaks just enough RESP over one pipelined asyncio connection (hiredis parses replies).
Pub/sub on `<prefix>revocations` (through redis.asyncio, off the hot path) feeds local
denylists so a revoked token is refused even when Redis is briefly unreachable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web

__all__ = ["MGetClient", "RevocationListener", "mget_command"]

_log = structlog.get_logger("portico.gateway.revocation")


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def mget_command(keys: list[bytes] | tuple[bytes, ...]) -> bytes:
    """`MGET keys` in RESP, for callers that send the same MGET many times."""
    return _command(b"MGET", *keys)


class _Protocol(asyncio.Protocol):
    """Pipelined RESP connection: commands issued in one loop iteration leave in one write, and
    a single watchdog (not a timer per command) drops the link when a reply is overdue."""

    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timeout = timeout
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave like one.
        self.transport = cast(asyncio.Transport, transport)
        self._watchdog = self._loop.call_later(self.timeout, self._check)

    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        if self.closed or self.transport is None:
            raise ConnectionError("redis connection lost")
        deadline = self._loop.time() + self.timeout
        futures = [self._loop.create_future() for _ in range(replies)]
        self.waiters.extend((future, deadline) for future in futures)
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(payload)
        return futures

    def send_one(self, payload: bytes) -> asyncio.Future[Any]:
        """`send` for a single command (the hot path: one MGET per request)."""
        if self.closed or self.transport is None:
            raise ConnectionError("redis connection lost")
        loop = self._loop
        future = loop.create_future()
        self.waiters.append((future, loop.time() + self.timeout))
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(payload)
        return future

    def _flush(self) -> None:
        if self._pending and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._pending))
        self._pending.clear()

    def _check(self) -> None:
        if self.closed:
            return
        if self.waiters and self.waiters[0][1] < self._loop.time():
            # An overdue reply would be matched to the wrong request later: drop the link.
            self._fail(TimeoutError("redis did not answer in time"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._watchdog = self._loop.call_later(self.timeout / 4, self._check)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                if isinstance(reply, hiredis.ReplyError):
                    waiter.set_exception(ConnectionError(f"redis error: {reply}"))
                else:
                    waiter.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail(ConnectionError("redis connection lost"))


class MGetClient:
    """A single pipelined Redis connection for MGET, reconnecting lazily after a failure."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        db = parts.path.strip("/")
        self.db = int(db) if db else 0
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self.timeout), self.host, self.port),
                self.timeout,
            )
            setup: list[bytes] = []
            if self.password is not None:
                auth = [b"AUTH"]
                if self.username:
                    auth.append(self.username.encode())
                setup.append(_command(*auth, self.password.encode()))
            if self.db:
                setup.append(_command(b"SELECT", str(self.db).encode()))
            if setup:
                await asyncio.gather(*protocol.send(b"".join(setup), len(setup)))
            self._protocol = protocol
            return protocol

    def mget(
        self, keys: tuple[bytes, ...], *, command: bytes = b""
    ) -> Awaitable[list[bytes | None]]:
        """MGET `keys` (`command`: the same, pre-serialised by `mget_command`); the awaitable
        raises ConnectionError/TimeoutError when Redis does not answer in time. Connected, it is
        the reply's future itself: no coroutine frame on the hot path."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return self._mget_after_connecting(keys, command)
        return protocol.send_one(command or _command(b"MGET", *keys))

    async def _mget_after_connecting(
        self, keys: tuple[bytes, ...], command: bytes
    ) -> list[bytes | None]:
        protocol = await self._connect()
        reply: list[bytes | None] = await protocol.send_one(command or _command(b"MGET", *keys))
        return reply

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


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
