"""A minimal pipelined RESP connection for the gateway's hot path (revocation MGET, cache
lookups, rate-limit EVALSHA), shared by all of them.

redis.asyncio costs ~130 us of client CPU per command (issue 5), so this speaks just enough RESP
over one asyncio connection, parsed by hiredis. Commands issued in the same loop iteration, by any
stage, leave in one write and their replies come back in one read. Each command has its own
deadline; one watchdog (not a timer per command) fails the overdue ones and drops the link when
the oldest is overdue, so a slow Redis fails requests within ~1.25 x their timeout instead of
stalling them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import Any, NamedTuple, cast
from urllib.parse import unquote, urlsplit

import hiredis

__all__ = ["RedisAddress", "ReplyError", "RespClient", "auth_command", "bulk", "command"]


class ReplyError(ConnectionError):
    """Redis answered with an error reply (e.g. NOSCRIPT, NOAUTH): for a caller that does not
    expect one, the backend is as unusable as an unreachable one."""


def bulk(part: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(part), part)


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(part) for part in parts)


class RedisAddress(NamedTuple):
    """Where a Redis is and who we are to it, from `redis://[user:password@]host[:port][/db]`."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        db = parts.path.strip("/")
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            int(db) if db else 0,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


def auth_command(username: str | None, password: str) -> bytes:
    """`AUTH [username] password` (a username only with an ACL user)."""
    if username:
        return command(b"AUTH", username.encode(), password.encode())
    return command(b"AUTH", password.encode())


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader()
        # (reply future, its deadline, when it was sent): replies come back in this order.
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float, float]] = (
            collections.deque()
        )
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timeout = timeout
        self.period = timeout / 4  # how often the watchdog looks
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave like one.
        self.transport = cast(asyncio.Transport, transport)
        self._watchdog = self._loop.call_later(self.period, self._check)

    def send(self, payload: bytes, timeout: float | None = None) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise ConnectionError("redis connection lost")
        future = self._loop.create_future()
        now = self._loop.time()
        if timeout is None:
            timeout = self.timeout
        elif timeout < self.period * 4:
            # The watchdog keeps up with the shortest deadline in use, from now on.
            self.period = timeout / 4
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = self._loop.call_later(self.period, self._check)
        self.waiters.append((future, now + timeout, now))
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(payload)
        return future

    def _flush(self) -> None:
        if self._pending and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._pending))
        self._pending.clear()

    def _check(self) -> None:
        if self.closed:
            return
        now = self._loop.time()
        if self.waiters and now - self.waiters[0][2] > self.timeout:
            # The oldest command has waited longer than the link's own timeout (at least any
            # command's): Redis is not answering; drop the link.
            self._fail(TimeoutError("redis did not answer in time"))
            if self.transport is not None:
                self.transport.abort()
            return
        for future, deadline, _ in self.waiters:
            # A command past its own deadline fails on time (a 75 ms rate-limit call behind a
            # slow one) without taking the link, and the other commands, down with it; it stays
            # in the queue so that its reply, if it comes, is still matched (and dropped).
            if deadline < now and not future.done():
                future.set_exception(TimeoutError("redis did not answer in time"))
        self._watchdog = self._loop.call_later(self.period, self._check)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.waiters:  # a reply nobody waits for: the stream is out of step
                self._fail(ConnectionError("unexpected redis reply"))
                if self.transport is not None:
                    self.transport.abort()
                return
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                if isinstance(reply, hiredis.ReplyError):
                    waiter.set_exception(ReplyError(str(reply)))
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


class RespClient:
    """One pipelined Redis connection, reconnected lazily after a failure."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.075,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> RespClient:
        host, port, db, username, password = RedisAddress.from_url(url)
        return cls(host, port, db=db, username=username, password=password, timeout=timeout)

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
            try:
                setup: list[asyncio.Future[Any]] = []
                if self.password is not None:
                    setup.append(protocol.send(auth_command(self.username, self.password)))
                if self.db:
                    setup.append(protocol.send(command(b"SELECT", str(self.db).encode())))
                if setup:
                    await asyncio.gather(*setup, return_exceptions=True)
                    for result in [future.exception() for future in setup]:
                        if result is not None:
                            raise result
            except BaseException:
                # A refused AUTH/SELECT (or a cancelled caller) must not leave a socket and its
                # watchdog behind: every later command would open another.
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise
            self._protocol = protocol
            return protocol

    def execute(self, payload: bytes, *, timeout: float | None = None) -> Awaitable[Any]:
        """Send one encoded command (answered within `timeout`, default the client's); the
        awaitable raises ConnectionError/TimeoutError/ReplyError on failure. Connected, it is the
        reply's future itself: no coroutine frame on the hot path."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return self._execute_after_connecting(payload, deadline=timeout)
        return protocol.send(payload, timeout)

    async def _execute_after_connecting(self, payload: bytes, *, deadline: float | None) -> Any:
        # The caller's deadline bounds the (re)connection too, not only the reply.
        protocol = await asyncio.wait_for(self._connect(), deadline or self.timeout)
        return await protocol.send(payload, deadline)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
