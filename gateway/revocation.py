"""Revocation: the pub/sub feed that keeps the gateway's denylists current, and the MGET that
checks a token in Redis when the feed cannot vouch for it.

A token is checked in Redis (one MGET over the gateway's shared pipelined connection,
`gateway.resp`) the first time it is seen in a subscription epoch, and again at least every
minute; between those, the feed on `<prefix>revocations` refuses it the moment it is revoked
(`RevocationListener`). Without a confirmed subscription, every request checks in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import orjson
import structlog
from aiohttp import web

from gateway.resp import RespClient, command

__all__ = ["MGetClient", "RevocationListener", "mget_command"]

_log = structlog.get_logger("portico.gateway.revocation")
_EPOCHS = itertools.count(1)
_PING = command(b"PING")


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
    task that read its bytes later.

    That ordering is what lets a token checked once stay trusted without a Redis round trip per
    request: the users service SETs the denylist key, then PUBLISHes, then answers the logout;
    Redis has written the message to this socket before the users service even reads its PUBLISH
    reply, so any request that follows the logout finds the token on the local denylist.
    `epoch` says whether that holds: a new number each time a subscription is confirmed, 0 while
    there is none. A token's check counts only for the epoch it was made in (`Authenticator`), so
    a lost or silent subscription (PING every `ping_interval`, dropped after three unanswered)
    sends every token back to a per-request MGET until it is confirmed again.
    """

    def __init__(self, redis_url: str, channel: str, on_message: Callable[[str, str], None], *,
                 on_epoch: Callable[[int], None] | None = None,
                 ping_interval: float = 1.0) -> None:  # fmt: skip
        parts = urlsplit(redis_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.channel = channel
        self.on_message = on_message
        self.on_epoch = on_epoch
        self.ping_interval = ping_interval
        self.epoch = 0
        self._transport: asyncio.Transport | None = None
        self._heard = 0.0
        self._lost: asyncio.Future[None] | None = None
        self._reader = hiredis.Reader()

    # -- the protocol side (called by the event loop) --------------------------------------

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._heard = asyncio.get_running_loop().time()
            if isinstance(reply, hiredis.ReplyError) or not isinstance(reply, list):
                if isinstance(reply, hiredis.ReplyError):  # refused AUTH or SUBSCRIBE
                    _log.warning("revocation channel refused", error=str(reply)[:80])
                    self._drop()
                continue  # AUTH's and CLIENT SETNAME's +OK
            kind = reply[0]
            if kind == b"message":
                self._handle(reply[2])
            elif kind == b"subscribe":
                self._set_epoch(next(_EPOCHS))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- the connection's life ------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            self._reader = hiredis.Reader()
            self._lost = loop.create_future()
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _Adapter(self), self.host, self.port), 2.0
                )
            except (OSError, TimeoutError) as exc:
                if backoff >= 1.0:
                    _log.warning("revocation channel unreachable", error=type(exc).__name__)
            else:
                self._transport = transport
                started = loop.time()
                try:
                    await self._subscribed(loop)
                except asyncio.CancelledError:
                    self._set_epoch(0)  # shutting down
                    raise
                finally:
                    self._drop()
                    self._transport = None
                if self.epoch:
                    self._set_epoch(0)
                    _log.warning("revocation channel lost; checking every token in redis")
                    # What was published meanwhile is lost: every cached credential is stale.
                    self.on_message("*", "")
                if loop.time() - started > 10 * self.ping_interval:
                    backoff = 0.05  # it had been up a while: reconnect at once
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _subscribed(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._transport is not None
        assert self._lost is not None
        setup: list[bytes] = []
        if self.password is not None:
            auth = [b"AUTH", self.password.encode()]
            if self.username:
                auth.insert(1, self.username.encode())
            setup.append(command(*auth))
        # Named, so an operator (and a test) can find this connection in CLIENT LIST.
        setup.append(command(b"CLIENT", b"SETNAME", _client_name(self.channel)))
        setup.append(command(b"SUBSCRIBE", self.channel.encode()))
        self._transport.write(b"".join(setup))
        self._heard = loop.time()
        while not self._lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), self.ping_interval)
            if self._lost.done():
                return
            if loop.time() - self._heard > 3 * self.ping_interval:
                _log.warning("revocation channel silent; reconnecting")
                return
            self._transport.write(_PING)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

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


def _client_name(channel: str) -> bytes:
    """`portico-revocations@<channel>`: CLIENT SETNAME takes no spaces or newlines."""
    safe = "".join(c if "!" <= c <= "~" else "_" for c in channel)
    return f"portico-revocations@{safe}".encode()


class _Adapter(asyncio.Protocol):
    """Hands the subscription connection's events to its listener."""

    def __init__(self, listener: RevocationListener) -> None:
        self.listener = listener

    def data_received(self, data: bytes) -> None:
        self.listener.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connection_lost(exc)
