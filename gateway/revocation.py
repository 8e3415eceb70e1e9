"""Revocation: the pub/sub feed that keeps the gateway's denylists current, and the MGET that
checks a token in Redis when the feed cannot vouch for it.

A token is checked in Redis (one MGET over the gateway's shared pipelined connection,
`gateway.resp`) the first time it is seen in a subscription epoch, and again at least every
minute; between those, the feed on `<prefix>revocations` refuses it the moment it is revoked
(`RevocationListener`). Without a confirmed subscription, every request checks in Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
import structlog
from aiohttp import web

from gateway.resp import RedisAddress, RespClient, auth_command, command

__all__ = [
    "MGetClient", "RevocationKeys", "RevocationListener", "RevocationUnchecked", "TokenRevoked",
    "mget_command",
]  # fmt: skip

_log = structlog.get_logger("portico.gateway.revocation")
_EPOCHS = itertools.count(1)
_PING = command(b"PING")


@dataclass(frozen=True, slots=True)
class RevocationKeys:
    """An access token's revocation keys as the rate-limit script takes them (the tail of its
    KEYS, their count, the token's `iat`), serialised once per token."""

    blob: bytes  # the keys, each a RESP bulk string
    count: int
    iat: bytes  # RESP bulk string


class TokenRevoked(Exception):
    """The rate-limit script found the token revoked (nothing was charged)."""


class RevocationUnchecked(Exception):
    """The rate limiter could not judge the token in Redis (it is not, or no longer, talking to
    Redis): the caller checks it itself, then asks again without it. Nothing was charged."""


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
    """Subscribes to the revocation channel over its own connection and applies each message
    (`on_message(kind, value)`) inside `data_received`, before the event loop runs any request
    task that read its bytes later: a message that has arrived is on the local deny-lists
    before any later request is looked at.

    `epoch` is a new number each time a subscription is confirmed and 0 while there is none;
    losing the subscription (closed, refused, or silent: PING every `ping_interval`, dropped
    after three unanswered) sets it to 0 at once and calls `on_message("*", "")` (what was
    published meanwhile is lost). With `revocation_check=feed` the `Authenticator` trusts a token
    checked in Redis in the current epoch without checking again; that relies on the message
    reaching this socket before the revoked token's next request does — the users service
    answers a revocation only after a round trip that follows its PUBLISH, so Redis has written
    the message, but a network that delays those bytes delays the refusal (by up to the silence
    limit). The default, `redis`, checks every request and uses the feed for the deny-lists only.
    """

    def __init__(self, redis_url: str, channel: str, on_message: Callable[[str, str], None], *,
                 on_epoch: Callable[[int], None] | None = None,
                 ping_interval: float = 1.0) -> None:  # fmt: skip
        self.address = RedisAddress.from_url(redis_url)  # a subscription ignores the db
        self.channel = channel
        self.on_message = on_message
        self.on_epoch = on_epoch
        self.ping_interval = ping_interval
        self.epoch = 0
        self._link: _Link | None = None
        self._warned: dict[str, float] = {}

    # -- one connection's events (from its `_Link`) -----------------------------------------

    def _replies(self, link: _Link, replies: list[Any]) -> None:
        for reply in replies:
            if link is not self._link or link.closed:
                return  # an old or dropped connection: nothing it says counts any more
            if isinstance(reply, hiredis.ReplyError):
                if link.setup and link.setup[0] == "setname":
                    link.setup.popleft()  # an ACL without CLIENT: only the name is missing
                    continue
                self._warn("revocation channel refused", error=str(reply)[:80])
                self._lose(link)
                return
            if not isinstance(reply, list):
                if link.setup:
                    link.setup.popleft()  # +OK of AUTH or CLIENT SETNAME
                continue
            kind = reply[0]
            if kind == b"message":
                self._handle(reply[2])
            elif kind == b"subscribe":
                self._set_epoch(next(_EPOCHS))

    def _lose(self, link: _Link) -> None:
        """The connection is gone or useless: no epoch from now on (synchronously: a request
        handled after this must not trust it), then close it."""
        link.close()
        if link is self._link:
            self._link = None
            if self.epoch:
                self._set_epoch(0)
                _log.warning("revocation channel lost")
                # What was published meanwhile is lost: every cached credential is stale.
                self._call("*", "")

    # -- the connection's life --------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        try:
            while True:
                started = loop.time()
                try:
                    await self._connect_and_listen(loop)
                except (OSError, TimeoutError) as exc:
                    if backoff >= 1.0:
                        self._warn("revocation channel unreachable", error=type(exc).__name__)
                except Exception as exc:  # never let the feed die silently
                    self._warn("revocation channel failed", error=type(exc).__name__)
                finally:
                    if self._link is not None:
                        self._lose(self._link)
                if loop.time() - started > 10 * self.ping_interval:
                    backoff = 0.05  # it had been up a while: reconnect at once
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        finally:
            if self.epoch:
                self._set_epoch(0)  # shutting down

    async def _connect_and_listen(self, loop: asyncio.AbstractEventLoop) -> None:
        link = _Link(self)
        address = self.address
        await asyncio.wait_for(
            loop.create_connection(lambda: link, address.host, address.port), 2.0
        )
        self._link = link
        setup: list[bytes] = []
        if address.password is not None:
            setup.append(auth_command(address.username, address.password))
            link.setup.append("auth")
        # Named, so an operator (and a test) can find this connection in CLIENT LIST.
        setup.append(command(b"CLIENT", b"SETNAME", _client_name(self.channel)))
        link.setup.append("setname")
        setup.append(command(b"SUBSCRIBE", self.channel.encode()))
        link.write(b"".join(setup))
        while not link.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.lost), self.ping_interval)
            if link.closed:
                return
            if loop.time() - link.heard > 3 * self.ping_interval:
                _log.warning("revocation channel silent; reconnecting")
                self._lose(link)
                return
            link.write(_PING)

    def _warn(self, event: str, **fields: Any) -> None:
        """Log `event` at most once a minute: a Redis that refuses us is retried every 2 s."""
        now = time.monotonic()
        if now - self._warned.get(event, -math.inf) >= 60.0:
            self._warned[event] = now
            _log.warning(event, **fields)

    def _set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def _handle(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
            kind, value = str(message["kind"]), str(message["value"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            _log.warning("malformed revocation message")
            return
        self._call(kind, value)

    def _call(self, kind: str, value: str) -> None:
        try:
            self.on_message(kind, value)
        except Exception:  # one bad message must not cost the ones behind it
            _log.exception("revocation message not applied", kind=kind)

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


def _client_name(channel: str) -> bytes:
    """`portico-revocations@<channel>`: CLIENT SETNAME takes no spaces or newlines."""
    safe = "".join(c if "!" <= c <= "~" else "_" for c in channel)
    return f"portico-revocations@{safe}".encode()


class _Link(asyncio.Protocol):
    """One subscription connection: parses its replies and hands them to the listener, which
    ignores any link but its current one."""

    def __init__(self, listener: RevocationListener) -> None:
        self.listener = listener
        self.reader = hiredis.Reader()
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.heard = self.loop.time()
        self.setup: collections.deque[str] = collections.deque()  # replies still to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = self.loop.time()
        self.reader.feed(data)
        replies: list[Any] = []
        try:
            while (reply := self.reader.gets()) is not False:
                replies.append(reply)
        except hiredis.ProtocolError:
            self.listener._lose(self)
            return
        self.listener._replies(self, replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._lose(self)
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if not self.lost.done():
            self.lost.set_result(None)
