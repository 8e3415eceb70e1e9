"""A lean HTTP/1.1 front end for the gateway's hot path, in front of aiohttp's server.

aiohttp's server machinery (parser callbacks, a `web.Request` and its multidicts, a
`StreamResponse`, the payload writer, a Task per request) costs more CPU per request than the
whole of nginx. Most gateway traffic is the simplest HTTP there is: a body-less GET/HEAD on a
proxied route. This protocol serves exactly that itself (one regex over the head, one write
upstream, one write of the whole response) and hands the connection to aiohttp's own
`RequestHandler` — for good — the moment anything else shows up: a body, `Expect`, `Upgrade`,
a percent-encoded or dot-segment path, HTTP/1.0, the gateway's own endpoints, local handlers,
or a head that does not parse. aiohttp then answers those exactly as before
(including its 400s for malformed requests), so the fast path never has to.

The pipeline below mirrors `gateway.app._pipeline` for proxied routes: the same request id,
authentication, rate limit, cache stage, forwarded headers, upstream attempts, response header
filtering, edge headers, gzip, metrics and access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from gateway.auth import RevocationCheck
from gateway.cache.entry import Entry
from gateway.h1client import unsafe_header_block
from gateway.proxy import (
    _RESPONSE_DROP,
    SMALL_BODY,
    ClientGone,
    body_chunks,
    forward_headers,
    is_compressible,
    raw_headers,
    response_headers,
    send_upstream,
)
from gateway.revocation import RevocationUnchecked, TokenRevoked
from libs.common.errors import Internal, PorticoError, UpstreamTimeout, UpstreamUnavailable
from libs.common.http import problem_parts, sane_request_id
from libs.common.protocol import MAX_HEADERS, MAX_LINE_SIZE

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.routing import Route

__all__ = ["FrontServer", "install"]

_log = structlog.get_logger("portico.gateway")

# Origin-form GET/HEAD over HTTP/1.1 whose header lines are all well formed (RFC 9110 token
# names, no control characters but HTAB in values, no obs-fold). Anything else is aiohttp's.
_HEAD = re.compile(
    rb"(GET|HEAD) (/[!-~]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
# Headers that mean "not the simple case": a body, an interim response, a protocol switch.
_DECLINE = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
# RFC 9110 singletons (Host, Content-Type, User-Agent, ...): aiohttp refuses a second copy with
# a 400, so a head repeating one is aiohttp's (forwarding both would let each hop pick its own).
_SINGLETON = frozenset(SINGLETON_HEADERS)
# A CR or LF that is not part of a CRLF: the head will never match `_HEAD`, and aiohttp refuses
# it as soon as it sees it (a bare-LF head has no CRLF CRLF to wait for).
_BARE = re.compile(rb"\r[^\n]|[^\r]\n")
# Past the gateway's aiohttp limits, a head gets aiohttp's own (problem+json) refusal.
_MAX_HEAD = MAX_LINE_SIZE
_MAX_HEADERS = MAX_HEADERS
_MAX_PIPELINED = 64 * 1024
_SERVER = SERVER_SOFTWARE.encode()
_ZLIB_SYNC_MAX = 4096  # like aiohttp: compress bigger bodies in the executor


_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class _Head:
    """The little of `web.Request` the edge helpers and `send_upstream` read (duck-typed)."""

    __slots__ = (
        "_query", "headers", "host", "method", "path", "raw_path", "remote", "secure", "transport",
    )  # fmt: skip

    body_exists = False
    content = None

    def __init__(self, method: str, raw_path: str, path: str, headers: CIMultiDictProxy[str],
                 front: FastFront) -> None:  # fmt: skip
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.headers = headers
        self.host: str = headers["Host"]
        self.remote = front.remote
        self.secure = front.secure
        self.transport = front.transport
        self._query: MultiDictProxy[str] | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        """The parsed query string, as aiohttp's `request.query` (yarl) parses it."""
        if self._query is None:
            _, _, query = self.raw_path.partition("?")
            self._query = (
                URL.build(path=self.path, query_string=query, encoded=True).query
                if query
                else _NO_QUERY
            )
        return self._query


class _Date:
    """The `Date` header value, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True).encode()
        return self.value


_DATE = _Date()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _reason(status).encode("latin-1", "replace"))


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


def _head_bytes(status: int, reason: str, headers: CIMultiDict[str], *, close: bool) -> bytearray:
    """Status line and header block: the headers given plus what aiohttp adds on prepare."""
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    return _finish_head(
        status, reason, lines, close=close and "Connection" not in headers,
        date="Date" not in headers, server="Server" not in headers,
    )  # fmt: skip


def _finish_head(status: int, reason: str, lines: list[str], *, close: bool, date: bool = True,
                 server: bool = True) -> bytearray:  # fmt: skip
    """Status line + `lines` + `Date`, `Server` (and `Connection: close`) + the blank line.

    Upstream header values cannot hold CR/LF (the client splits on them), but a bare CR or LF
    would split the response: refuse it the way aiohttp's writer does (ValueError -> 500). One
    check for the block, not one a line."""
    text = "".join(lines)
    if unsafe_header_block(text, lines=len(lines)):
        raise ValueError("control character in a response header")
    out = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace")))
    out += text.encode("utf-8", "surrogateescape")
    if date:
        out += b"Date: " + _DATE.now() + b"\r\n"
    if server:
        out += b"Server: " + _SERVER + b"\r\n"
    if close:
        out += b"Connection: close\r\n"
    out += b"\r\n"
    return out


class FastFront(asyncio.Protocol):
    """One client connection: fast-path requests here, everything else to aiohttp."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.gateway = server.gateway
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.inner: RequestHandler | None = None
        self.remote: str | None = None
        self.secure = False
        self.buffer = b""
        self.scanned = 0  # how much of `buffer` holds no head end and no bare CR/LF
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.lost = False
        self.last_active = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.paused = False
        self.reading_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.stall_handle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports duck-type
        tcp_keepalive(self.transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple | list) and peer else None
        self.secure = transport.get_extra_info("sslcontext") is not None
        self.server._connections[self] = self.transport  # type: ignore[index]
        self.last_active = self.loop.time()
        self.idle_handle = self.loop.call_at(
            self.last_active + self.server.idle_timeout, self._check_idle
        )

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        self.buffer = self.buffer + data if self.buffer else data
        if self.task is None and not self.paused:
            if not self.closing:
                self._next()
        elif len(self.buffer) > _MAX_PIPELINED and not self.reading_paused:
            # A client pipelining faster than we answer (or than it reads the answers) waits in
            # its own socket buffer.
            assert self.transport is not None
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            self.inner.eof_received()
        return None  # close the transport; an in-flight request is cancelled

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        if self.stall_handle is not None:
            self.stall_handle.cancel()
            self.stall_handle = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
            return
        self.server._connections.pop(self, None)  # type: ignore[call-overload]
        if self.task is not None:
            self.task.cancel()
        self._wake_drain()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()
        self.paused = True
        # Whoever writes (this front, or aiohttp after a hand-off), a client that takes none of
        # what is buffered for it within the timeout is cut off: it cannot hold a request, an
        # upstream stream and the buffers forever.
        if self.stall_handle is None:
            self.stall_handle = self.loop.call_later(
                self.gateway.settings.client_write_timeout, self._stalled
            )

    def _stalled(self) -> None:
        self.stall_handle = None
        if self.paused and not self.lost and self.transport is not None:
            _log.info("client stopped reading; disconnected", remote=self.remote)
            self.transport.abort()

    def resume_writing(self) -> None:
        if self.stall_handle is not None:
            self.stall_handle.cancel()
            self.stall_handle = None
        if self.inner is not None:
            self.inner.resume_writing()
        self.paused = False
        self._wake_drain()
        if self.inner is None and self.task is None and not self.closing and not self.lost:
            self._continue()  # the answers written so far drained: serve what is pipelined

    # -- aiohttp's Server contract (graceful shutdown) -----------------------------------------

    def close(self) -> None:
        """Stop after the request in flight (aiohttp's `RequestHandler.close`)."""
        self.closing = True
        if self.task is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, grace: float | None = 15.0) -> None:
        """Let the request in flight finish within `grace` seconds, then close."""
        self.closing = True
        if self.task is not None:
            task = self.task
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), grace)
            if not task.done():
                task.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- dispatch -----------------------------------------------------------------------------

    def _check_idle(self) -> None:
        self.idle_handle = None
        if self.lost or self.inner is not None:
            return
        due = self.last_active + self.server.idle_timeout
        if self.task is None and self.loop.time() >= due:
            assert self.transport is not None
            self.transport.close()
            return
        self.idle_handle = self.loop.call_at(
            max(due, self.loop.time() + 1.0) if self.task is not None else due, self._check_idle
        )

    def _next(self) -> None:
        """Serve the request at the start of the buffer, or give the connection to aiohttp."""
        buffer = self.buffer
        # Only the bytes not scanned yet (and the 3 before them, a CRLF CRLF may straddle): a head
        # trickled in byte by byte must not cost a regex run over the whole buffer per byte.
        start = max(self.scanned - 3, 0)
        if buffer.find(b"\r\n\r\n", start) < 0:
            if (
                len(buffer) < _MAX_HEAD
                and (buffer.startswith((b"GET /", b"HEAD /")) or b"GET /".startswith(buffer))
                and _BARE.search(buffer, start) is None
            ):
                self.scanned = len(buffer)
                return  # the rest of the head is on its way (the idle timer bounds the wait)
            self._hand_off()
            return
        found = _HEAD.match(buffer)
        if found is None:
            self._hand_off()
            return
        served = self._start(found)
        if served:
            self.buffer = buffer[found.end() :]
            self.scanned = 0
        else:
            self._hand_off()

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting with what is buffered."""
        assert self.transport is not None
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.server._connections.pop(self, None)  # type: ignore[call-overload]
        inner = self.server.fallback()
        self.inner = inner
        inner.connection_made(self.transport)
        if self.paused:
            inner.pause_writing()
        data, self.buffer = self.buffer, b""
        if data:
            inner.data_received(data)

    def _start(self, found: re.Match[bytes]) -> bool:
        """Start serving a parsed head; False when it is not the fast path's to serve."""
        if found.end() > _MAX_HEAD or found.group(3).count(b"\r\n") > _MAX_HEADERS:
            return False  # over aiohttp's limits: its own (problem+json) refusal
        raw_path = found.group(2).decode("ascii")
        path = raw_path.partition("?")[0]
        if "%" in path or "/." in path or "#" in raw_path or "\\" in raw_path:
            return False  # aiohttp decodes/normalises these: keep its exact view of the path
        gateway = self.gateway
        if path in gateway.own:
            return False
        match = gateway.table.match(path)
        if match is None:
            return False
        method = found.group(1).decode("ascii")
        route = match.by_method.get(method)
        if route is None or route.handler is not None:
            return False
        pairs: list[tuple[str, str]] = []
        close = False
        singletons: set[str] = set()
        for line in found.group(3).decode("utf-8", "surrogateescape").split("\r\n")[:-1]:
            name, _, value = line.partition(":")
            lower = name.lower()
            if lower in _DECLINE:
                return False
            if lower in _SINGLETON:
                if lower in singletons:
                    return False  # aiohttp's 400
                singletons.add(lower)
            elif lower == "connection" and "close" in value.lower():
                close = True
            pairs.append((name, value.strip(" \t")))
        if "host" not in singletons:
            return False
        head = _Head(method, raw_path, path, CIMultiDictProxy(CIMultiDict(pairs)), self)
        self.closing = self.closing or close
        self.task = self.loop.create_task(self._serve(head, route))
        return True

    def _finished(self) -> None:
        self.task = None
        self.last_active = self.loop.time()
        if self.lost or self.transport is None:
            return
        if self.closing:
            self.transport.close()
            return
        if not self.paused:
            # Like aiohttp's drain after each response: a client that does not read its answers
            # gets no more served (`resume_writing` continues), so they cannot pile up here.
            self._continue()

    def _continue(self) -> None:
        assert self.transport is not None
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buffer:
            self._next()

    # -- writing ------------------------------------------------------------------------------

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drain(self) -> None:
        if self.lost:
            raise ClientGone("the client went away")
        if self.paused:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter  # `_stalled` aborts a client that never reads
            finally:
                self.drain_waiter = None
            if self.lost:
                raise ClientGone("the client went away")

    def _write(self, data: bytes | bytearray) -> None:
        if self.lost or self.transport is None:
            raise ClientGone("the client went away")
        self.transport.write(data)

    # -- the pipeline -------------------------------------------------------------------------

    async def _serve(self, head: _Head, route: Route) -> None:
        gateway = self.gateway
        started = time.perf_counter()
        given = head.headers.get("X-Request-ID")
        request_id = sane_request_id(given) if given is not None else self.server.next_id()
        status = 500
        principal_id: str | None = None
        written = [False]  # a byte of the response reached the transport
        try:
            try:
                status, principal_id = await self._proxy(head, route, request_id, written)
            except PorticoError as exc:
                status = self._problem(head, exc, request_id)
            except asyncio.CancelledError:
                status = 499  # the client went away
                raise
            except ClientGone:
                status = 499  # went away, or stopped reading, mid-response: nobody to answer
                self._abort()
            except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    TimeoutError) as exc:  # fmt: skip
                if written[0]:
                    status = self._cut(exc, request_id)
                elif isinstance(exc, TimeoutError):
                    status = self._problem(head, UpstreamTimeout(), request_id)
                else:
                    status = self._problem(head, UpstreamUnavailable(), request_id)
            except Exception as exc:
                if written[0]:
                    status = self._cut(exc, request_id)
                else:
                    _log.exception("unhandled gateway error", request_id=request_id)
                    status = self._problem(head, Internal(), request_id)
        except BaseException:
            if self.transport is not None:
                self.transport.abort()
            raise
        finally:
            elapsed = time.perf_counter() - started
            gateway.tally.add(route.template, head.method, status, elapsed)
            if gateway.access_log is not None:
                gateway.access_log.request(
                    request_id=request_id, method=head.method, route=route.template,
                    status=status, duration_ms=round(elapsed * 1000, 3),
                    principal_id=principal_id,
                )  # fmt: skip
            self._finished()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _cut(self, exc: BaseException, request_id: str) -> int:
        """The upstream failed after the response started: nothing sane is left to send, so the
        client's connection is dropped (it sees a truncated response, never a spliced one)."""
        _log.warning("upstream failed mid-response", request_id=request_id,
                     error=type(exc).__name__)  # fmt: skip
        self._abort()
        return 502

    def _problem(self, head: _Head, error: PorticoError, request_id: str) -> int:
        """Write `error` as problem+json, as `problem_response` + `handle` would (without a
        `web.Response` to build and take apart: a 429 is an answer an abusive client gets by
        the thousand)."""
        payload, headers = problem_parts(error, request_id)
        headers["X-Request-ID"] = request_id
        self.gateway.edge.decorate(cast(web.Request, head), headers)
        headers["Content-Length"] = str(len(payload))
        status = error.status
        out = _head_bytes(status, _reason(status), headers, close=self.closing)
        if head.method != "HEAD":
            out += payload
        self._write(out)
        return status

    async def _proxy(self, head: _Head, route: Route, request_id: str, written: list[bool]
                     ) -> tuple[int, str | None]:  # fmt: skip
        gateway = self.gateway
        request = cast(web.Request, head)
        headers = head.headers
        principal = None
        verified = None
        check: RevocationCheck | None = None
        limiter = gateway.ratelimit
        # A limiter talking to Redis judges the token in its own script call (one round trip for
        # both, and still before anything is charged); else the check's MGET is sent now, not
        # awaited, and the cache lookup below joins it in the same write to Redis.
        fold = limiter is not None and limiter.folds_revocation
        if route.auth != "none":
            verified, check = await gateway.auth.authenticate_begin(headers, route, hold=fold)
            if verified is not None:
                principal = verified.principal
        found: Any = None
        cache = gateway.cache
        if route.cache is not None and cache is not None:
            try:
                found = await cache.probe(request, route.cache, principal, route.template)
            except BaseException:
                if check is not None:
                    check.discard()
                raise
        if check is not None and not fold:
            # Before anything is answered, forwarded, or charged to the principal's rate limit:
            # a stolen revoked token must not spend its victim's quota.
            await check
        extra: list[tuple[str, str]] = []
        if limiter is not None:
            client = gateway.edge.client_ip(request)
            try:
                decision = await limiter.evaluate(
                    route_policy=route.rate, client_ip=client, principal=principal,
                    revocation=check.limiter_keys() if fold and check is not None else None,
                )  # fmt: skip
            except TokenRevoked:
                assert check is not None
                check.refuse()
            except RevocationUnchecked:  # Redis went away: judge it ourselves, then charge
                assert check is not None
                await check
                decision = await limiter.evaluate(
                    route_policy=route.rate, client_ip=client, principal=principal
                )
            if decision is not None:
                extra.extend(decision.header_items())
        probe: Any = None
        if found is not None and cache is not None:
            if isinstance(found, tuple):
                entry, age = found
                cache.count_hit(route.template)
                status = self._hit(head, entry, age, extra, request_id, written)
                return status, principal.id if principal is not None else None
            probe = found
        identity = gateway.auth.identity_of(verified) if verified is not None else None
        forwarded = forward_headers(request, gateway.edge, identity=identity, request_id=request_id)
        if route.cache is not None and cache is not None:
            cached = await cache.handle(
                request, policy=route.cache, principal=principal,
                fetch=self.server.buffered_fetch(request, gateway, route, forwarded),
                route=route.template, probe=probe,
            )  # fmt: skip
            status = self._local(head, cached, extra, request_id, written)
            return status, principal.id if principal is not None else None
        upstream = gateway.pools[route.upstream]
        response = await send_upstream(
            request, upstream, route, forwarded,
            retry_backoff=gateway.settings.retry_backoff_seconds,
        )  # fmt: skip
        extra.append(("X-Request-ID", request_id))
        extra.extend(gateway.edge.response_items(request))
        try:
            status = await self._relay(head, response, extra, written)
        finally:
            response.release()
        return status, principal.id if principal is not None else None

    def _hit(self, head: _Head, entry: Entry, age: int, extra: list[tuple[str, str]],
             request_id: str, written: list[bool]) -> int:  # fmt: skip
        """A fresh cache entry as stored: its pre-rendered header lines plus what this answer
        adds, the same headers `_local` would write for it (`CacheStage.probe` chose it)."""
        wire = entry.wire_headers()
        assert wire is not None, "CacheStage.probe hands over only entries with wire headers"
        lines, vary = wire
        status = entry.status
        body = entry.body
        out = bytearray(_STATUS_LINES.get(status) or _status_line(status))
        out += lines
        if entry.gzipped:
            out += b"Content-Encoding: gzip\r\n"
        own: dict[str, str] = {"Vary": vary} if vary is not None else {}
        for name, value in extra:
            own[name] = value
        own["X-Request-ID"] = request_id
        self.gateway.edge.decorate(cast(web.Request, head), own)
        own["Content-Length"] = str(len(body))
        text = "".join([f"{name}: {value}\r\n" for name, value in own.items()])
        if unsafe_header_block(text, lines=len(own)):
            raise ValueError("control character in a response header")  # as aiohttp refuses
        out += b"X-Cache-Status: HIT\r\nAge: %d\r\n" % age
        out += text.encode("utf-8", "surrogateescape")
        out += b"Date: " + _DATE.now() + b"\r\nServer: " + _SERVER + b"\r\n"
        if self.closing:
            out += b"Connection: close\r\n"
        out += b"\r\n"
        if head.method != "HEAD":
            out += body
        written[0] = True
        self._write(out)
        return status

    def _local(self, head: _Head, response: web.StreamResponse, extra: list[tuple[str, str]],
               request_id: str, written: list[bool]) -> int:  # fmt: skip
        """Write a response built in the gateway (the cache stage's), as aiohttp would after
        `_pipeline` and `handle` decorated it."""
        body = getattr(response, "body", None)
        if response.prepared or not isinstance(body, bytes | bytearray | None):
            raise TypeError("the fast front end writes only unprepared in-memory responses")
        headers = response.headers
        for name, value in extra:
            headers[name] = value
        headers["X-Request-ID"] = request_id
        self.gateway.edge.decorate(cast(web.Request, head), headers)
        status = response.status
        body = body or b""
        empty_status = status in (204, 304) or status < 200
        is_head = head.method == "HEAD"
        # aiohttp's Response._start + _prepare_headers (RFC 9110 section 8.6).
        if empty_status:
            headers.popall("Content-Length", None)
            headers.popall("Transfer-Encoding", None)
            body = b""
        else:
            if "Content-Length" not in headers and (body or not is_head):
                headers["Content-Length"] = str(len(body))
            if is_head:
                headers.popall("Transfer-Encoding", None)
            elif body:
                headers.setdefault("Content-Type", "application/octet-stream")
            if is_head:
                body = b""
        out = _head_bytes(status, response.reason, headers, close=self.closing)
        out += body
        written[0] = True
        self._write(out)
        return status

    async def _relay(self, head: _Head, upstream: Any, extra: list[tuple[str, str]],
                     written: list[bool]) -> int:  # fmt: skip
        """`gateway.proxy.relay`, writing the response itself: upstream headers minus hop-by-hop
        ones, each extra header replacing the upstream's of that name (`Vary` merges)."""
        replaced = {name.lower() for name, _ in extra}
        lines: list[str] = []
        vary: str | None = None
        content_type = ""
        encoded = False
        for name, value in raw_headers(upstream):
            lower = name.lower()
            if lower in _RESPONSE_DROP:
                if lower == "connection":
                    return await self._relay_named(head, upstream, extra, written)
                continue
            if lower == "vary":
                if vary is None:
                    vary = value
                if "vary" in replaced:
                    continue  # merged into the extra `Vary` below, replacing every upstream one
            elif lower in replaced:
                continue
            elif lower == "content-type":
                content_type = value
            elif lower == "content-encoding":
                encoded = True
            lines.append(f"{name}: {value}\r\n")
        for name, value in extra:
            if name == "Vary":
                value = vary = value if vary is None else f"{vary}, {value}"
            lines.append(f"{name}: {value}\r\n")
        return await self._respond(head, upstream, lines, vary, content_type, encoded, written)

    async def _relay_named(self, head: _Head, upstream: Any, extra: list[tuple[str, str]],
                           written: list[bool]) -> int:  # fmt: skip
        """The rare upstream `Connection: <names>`: the generic (multidict) filtering."""
        headers = response_headers(raw_headers(upstream), extra)
        vary = headers.get("Vary")
        lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
        return await self._respond(
            head, upstream, lines, vary, headers.get("Content-Type", ""),
            "Content-Encoding" in headers, written,
        )  # fmt: skip

    async def _respond(self, head: _Head, upstream: Any, lines: list[str], vary: str | None,
                       content_type: str, encoded: bool, written: list[bool]) -> int:  # fmt: skip
        status: int = upstream.status
        reason: str = upstream.reason or _reason(status)
        length: int | None = upstream.content_length
        is_head = head.method == "HEAD"
        no_body = is_head or status in (204, 304) or status < 200
        compress = (
            not no_body
            and not encoded
            and (length is None or length >= self.gateway.settings.gzip_min_bytes)
            and "gzip" in head.headers.get("Accept-Encoding", "")
            and is_compressible(content_type)
        )
        if compress:
            if vary is not None:  # replace the merged `Vary` line(s) with one that adds ours
                lines = [line for line in lines if line[:5].lower() != "vary:"]
                lines.append(f"Vary: {vary}, Accept-Encoding\r\n")
            else:
                lines.append("Vary: Accept-Encoding\r\n")
        close = self.closing
        if no_body:
            if length is not None and is_head and status not in (204, 304) and status >= 200:
                lines.append(f"Content-Length: {length}\r\n")
            written[0] = True
            self._write(_finish_head(status, reason, lines, close=close))
            return status
        if length is not None and length <= SMALL_BODY:
            body = await upstream.read()
            if compress and body:
                lines.append("Content-Encoding: gzip\r\n")
                body = await self._gzip(body)
            if body and not content_type:
                lines.append("Content-Type: application/octet-stream\r\n")
            lines.append(f"Content-Length: {len(body)}\r\n")
            out = _finish_head(status, reason, lines, close=close)
            out += body
            written[0] = True
            self._write(out)
            return status
        if not content_type:
            lines.append("Content-Type: application/octet-stream\r\n")
        chunked = compress or length is None
        if compress:
            lines.append("Content-Encoding: gzip\r\n")
        lines.append(
            "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
        )
        written[0] = True
        self._write(_finish_head(status, reason, lines, close=close))
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS) if compress else None
        async for chunk in body_chunks(upstream):
            if compressor is not None:
                chunk = compressor.compress(chunk)
            if chunked:
                if chunk:
                    self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                self._write(chunk)
            await self._drain()
        if chunked:
            tail = compressor.flush() if compressor is not None else b""
            self._write((b"%x\r\n%b\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n")
        return status

    async def _gzip(self, body: bytes) -> bytes:
        def compress() -> bytes:
            compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            return compressor.compress(body) + compressor.flush()

        if len(body) <= _ZLIB_SYNC_MAX:
            return compress()
        return await self.loop.run_in_executor(None, compress)


class FrontServer(Server):
    """aiohttp's `Server` whose connections start on the fast front end."""

    gateway: Gateway
    next_id: Callable[[], str]
    idle_timeout: float
    buffered_fetch: Callable[..., Callable[[], Awaitable[Any]]]

    def __call__(self) -> RequestHandler:
        return cast(RequestHandler, FastFront(self))

    def fallback(self) -> RequestHandler:
        return super().__call__()


def install(app: web.Application, gateway: Gateway, next_id: Callable[[], str]) -> None:
    """Serve `app` through `FrontServer` (the app must have no middlewares: the fast path
    bypasses aiohttp's handler chain entirely)."""
    from gateway.app import _buffered_fetch  # the cache stage's `fetch`, as the slow path's

    make_handler = app._make_handler

    def make(**kwargs: Any) -> Server:
        server = make_handler(**kwargs)
        if app.middlewares:
            return server
        server.__class__ = FrontServer
        front = cast(FrontServer, server)
        front.gateway = gateway
        front.next_id = next_id
        front.buffered_fetch = _buffered_fetch
        front.idle_timeout = float(kwargs.get("keepalive_timeout", 75.0))
        return front

    app._make_handler = make  # type: ignore[method-assign]
