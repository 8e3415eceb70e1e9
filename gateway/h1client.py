"""A lean HTTP/1.1 keep-alive client for body-less upstream requests (the hot path: GET).

aiohttp's ClientSession costs ~100 us of CPU per request (tracing, cookie jar, timeouts, request
and response objects). A proxy forwarding a GET needs far less: write one pre-built request, parse
a status line and headers, then stream the body with flow control. Requests with a body, the
WebSocket upgrade and the gateway's own calls keep using aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from typing import Any, cast

from multidict import CIMultiDict

__all__ = [
    "H1Pool", "H1Response", "StaleConnection", "UpstreamProtocolError", "unsafe_header_block",
]  # fmt: skip

_MAX_HEAD = 64 * 1024
_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024


# What a header block may hold once its CRLFs are gone: HTAB, visible ASCII, obs-text.
_SAFE_HEADER_BYTES = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


def unsafe_header_block(block: bytes | str, *, lines: int | None = None) -> bool:
    """Header lines joined by CRLF hold a control character other than HTAB, or a CR or LF
    that does not end a line (RFC 9110 5.5): relayed, it could split a response. `lines`: how
    many CRLFs the block must hold (one per header written): a value holding a whole CRLF of its
    own would be a header of its own. (CRLFs removed, whatever `translate` does not delete is
    unsafe: two C passes, ~2x faster than a character class search and counts of CR and LF.)"""
    if isinstance(block, str):
        block = block.encode("utf-8", "surrogateescape")
    stripped = block.replace(b"\r\n", b"")
    if lines is not None and len(block) - len(stripped) != 2 * lines:
        return True
    return bool(stripped.translate(None, _SAFE_HEADER_BYTES))


class UpstreamProtocolError(ConnectionError):
    """The upstream broke HTTP/1.1 framing or closed the connection early."""


class StaleConnection(UpstreamProtocolError):
    """The upstream closed the connection before sending a single byte of the response."""


class H1Response:
    """A response whose headers arrived; the body is read with `read()` or `chunks()`."""

    __slots__ = (
        "_buffered", "_chunks", "_conn", "_done", "_error", "_waiter", "content_length",
        "raw_headers", "reason", "status", "timeout",
    )  # fmt: skip

    def __init__(self, conn: _Connection, status: int, reason: str,
                 raw_headers: list[tuple[str, str]], content_length: int | None,
                 timeout: float) -> None:  # fmt: skip
        self._conn = conn
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self.content_length = content_length
        self.timeout = timeout
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.raw_headers)

    # -- fed by the connection --
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the proxy --
    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._expire, self._waiter)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("upstream body stalled"))
            self._conn.abort()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < _LOW_WATER:
                    self._conn.resume()
                yield chunk
                continue
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    async def read(self) -> bytes:
        if self._done and self._error is None:  # the whole body already arrived (small bodies)
            parts = list(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            return parts[0] if len(parts) == 1 else b"".join(parts)
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back (or close it when the body was not read to the end)."""
        if not self._done:
            self._conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self._head = bytearray()
        self._head_waiter: asyncio.Future[H1Response] | None = None
        self._response: H1Response | None = None
        self._mode = ""  # "length" | "chunked" | "close" while a body is being received
        self._remaining = 0
        self._chunk_buf = bytearray()
        self._keep_alive = True
        self._no_body = False
        self._timeout = 0.0
        # Cached: CPython 3.11's get_running_loop() makes a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports duck-type

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = UpstreamProtocolError("upstream closed the connection")
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(
                error if self._head else StaleConnection("upstream closed an idle connection")
            )
        response = self._response
        if response is not None:
            self._response = None
            if self._mode == "close":
                response._finish()
            else:
                response._finish(error)

    def data_received(self, data: bytes) -> None:
        if self._response is not None:
            self._body(data)
        elif self._head_waiter is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    self._broken("response head too large")
                return
            head = bytes(self._head[:end])
            rest = bytes(self._head[end + 4 :])
            self._head.clear()
            self._parse_head(head)
            if rest and self._response is not None:
                self._body(rest)
            elif rest:
                self._broken("data after a body-less response")
        else:
            self._broken("unsolicited data")

    # -- parsing --
    def _parse_head(self, head: bytes) -> None:
        if unsafe_header_block(head):
            # Relayed, a bare LF or CR would split the client's response (header injection).
            self._broken("control character in the response head")
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, code, *reason = lines[0].split(" ", 2)
            status = int(code)
        except ValueError:
            self._broken("bad status line")
            return
        if not version.startswith("HTTP/1.") or status < 200:
            self._broken("unsupported response")  # 1xx never answers a body-less request
            return
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t":
                self._broken("bad header line")
                return
            value = value.strip()
            lower = name.lower()
            if lower == "content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    self._broken("bad content-length")
                    return
                length = int(value)
            elif lower == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lower == "connection":
                tokens = value.lower()
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            headers.append((name, value))
        self._keep_alive = keep_alive
        waiter = self._head_waiter
        self._head_waiter = None
        if self._no_body or status in (204, 304):
            response = H1Response(self, status, reason[0] if reason else "", headers,
                                  length, self._timeout)  # fmt: skip
            response._done = True
            self._done()
        else:
            if chunked:
                self._mode, length = "chunked", None
            elif length is not None:
                self._mode, self._remaining = "length", length
            else:
                self._mode, self._keep_alive = "close", False
            response = H1Response(self, status, reason[0] if reason else "", headers,
                                  length, self._timeout)  # fmt: skip
            self._response = response
            if self._mode == "length" and length == 0:
                self._complete()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        if self._mode == "length":
            if len(data) > self._remaining:
                self._broken("more body than content-length")
                return
            self._remaining -= len(data)
            response._feed(data)
            if self._remaining == 0:
                self._complete()
        elif self._mode == "close":
            response._feed(data)
        else:
            self._chunked(data, response)

    def _chunked(self, data: bytes, response: H1Response) -> None:
        buf = self._chunk_buf
        buf += data
        while True:
            if self._remaining > 0:  # inside a chunk's data
                take = min(self._remaining, len(buf))
                if take == 0:
                    return
                response._feed(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._remaining = -1  # expect the CRLF after the data
                continue
            if self._remaining == -1:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    self._broken("bad chunk terminator")
                    return
                del buf[:2]
                self._remaining = 0
                continue
            if self._remaining == -2:  # trailers until an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    if buf:
                        self._broken("data after the last chunk")
                        return
                    self._complete()
                    return
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    self._broken("bad chunk size line")
                return
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            del buf[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                self._broken("bad chunk size")
                return
            if size == 0:
                self._remaining = -2
            else:
                self._remaining = size

    def _complete(self) -> None:
        response = self._response
        self._response = None
        self._mode = ""
        self._remaining = 0
        self._chunk_buf.clear()
        if response is not None:
            response._finish()
        self._done()

    def _done(self) -> None:
        if self.paused:
            self.resume()
        if self._keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self.abort()

    def _broken(self, why: str) -> None:
        error = UpstreamProtocolError(why)
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)
        if self._response is not None:
            self._response._finish(error)
            self._response = None
        self.abort()

    # -- flow control / lifecycle --
    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def send(self, payload: bytes, *, no_body: bool, timeout: float) -> asyncio.Future[H1Response]:
        assert self.transport is not None
        self._no_body = no_body
        self._timeout = timeout
        self._keep_alive = True
        waiter: asyncio.Future[H1Response] = self._loop.create_future()
        self._head_waiter = waiter
        self.transport.write(payload)
        return waiter


class H1Pool:
    """Idle keep-alive connections to one instance (`host:port`)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, max_idle: int = 256
                 ) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}".encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        # Requests awaiting their response head: one watchdog timer for all of them (armed at
        # the earliest deadline) instead of a timer created and cancelled per request.
        self._waiting: dict[asyncio.Future[H1Response], tuple[float, _Connection]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watch_at = when
        self._watchdog = loop.call_at(when, self._watch, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        self._watch_at = math.inf
        now = loop.time()
        nearest = math.inf
        for waiter, (deadline, conn) in list(self._waiting.items()):
            if deadline <= now:
                _expire_head(waiter, conn)
            elif deadline < nearest:
                nearest = deadline
        if nearest < math.inf:
            self._arm(loop, nearest)

    def release(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self), self.host, self.port),
            self.connect_timeout,
        )
        return conn, False

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], *,
                      read_timeout: float) -> H1Response:  # fmt: skip
        """Send a body-less idempotent request; returns once the response headers arrived.

        Raises TimeoutError (no head within `read_timeout`) or ConnectionError/OSError. A reused
        keep-alive connection the upstream closed before answering is retried once on a fresh
        one (safe: only idempotent methods come here), as every HTTP client does.
        """
        timeout = read_timeout
        head = "".join([f"{name}: {value}\r\n" for name, value in headers])
        payload = b"".join((
            f"{method} {target} HTTP/1.1\r\nHost: ".encode(), self.authority, b"\r\n",
            head.encode("utf-8", "surrogateescape"), b"\r\n",
        ))  # fmt: skip
        no_body = method == "HEAD"
        loop = self._loop
        if loop is None:  # the pool may be built before the loop runs
            loop = self._loop = asyncio.get_running_loop()
        for _ in range(2):
            conn: _Connection | None = None
            while self._idle and conn is None:  # inline: no coroutine when a connection idles
                conn = self._idle.pop()
                if conn.closed:
                    conn = None
            reused = conn is not None
            if conn is None:
                conn, reused = await self._acquire()
            waiter = conn.send(payload, no_body=no_body, timeout=timeout)
            deadline = loop.time() + timeout
            # Keyed by the waiter: the connection may already serve another request (it goes
            # back to the pool as soon as its response is complete, before this coroutine runs).
            self._waiting[waiter] = (deadline, conn)
            if deadline < self._watch_at:
                self._arm(loop, deadline)
            try:
                return await waiter
            except StaleConnection:
                if not reused:
                    raise
                continue  # stale keep-alive connection: try once on a fresh one
            finally:
                del self._waiting[waiter]
        raise UpstreamProtocolError("upstream keeps closing connections")

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
            self._watch_at = math.inf


def _expire_head(waiter: asyncio.Future[Any], conn: _Connection) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no response head in time"))
        conn.abort()
