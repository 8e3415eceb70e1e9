"""The streaming reverse proxy: forwarded headers, upstream attempts with retries, relaying.

Bodies are streamed both ways; only small responses with a known length are read whole, which
turns them into one write to the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from gateway.edge import Edge
from gateway.h1client import H1Response, UpstreamProtocolError, unsafe_header_block
from gateway.routing import IDEMPOTENT, Route
from gateway.tally import DurationTally
from gateway.upstreams import UPSTREAM_DURATION, Upstream, backoff_delay
from libs.common.errors import BadRequest, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from libs.common.identity import IDENTITY_HEADER

__all__ = [
    "HOP_BY_HOP",
    "BodyLimit",
    "ClientGone",
    "Upstreamed",
    "body_chunks",
    "filter_response_headers",
    "forward_headers",
    "is_compressible",
    "relay",
    "send_upstream",
]

_log = structlog.get_logger("portico.gateway.proxy")
Upstreamed = H1Response | aiohttp.ClientResponse

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the gateway sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
    }
)  # fmt: skip
_REQUEST_DROP = HOP_BY_HOP | {"host", "expect", "forwarded", "x-real-ip", "x-request-id"}
# Client-sent identity claims never reach a service (it trusts only the signed identity).
_IDENTITY_PREFIXES = ("x-user-", "x-user", "x-principal", "x-portico-", "x-forwarded-")
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date", "surrogate-key"}
_COMPRESSIBLE = ("text/", "application/json", "application/problem+json", "application/xml",
                 "application/javascript", "image/svg+xml")  # fmt: skip
SMALL_BODY = 256 * 1024
CHUNK = 256 * 1024
# `gateway_upstream_request_duration_seconds`, batched (Histogram.observe costs ~2 us a call);
# flushed by its timer and before every /metrics scrape.
UPSTREAM_TALLY = DurationTally(UPSTREAM_DURATION)


class ClientGone(ConnectionResetError):
    """The client went away, or stopped reading, after its response started (a 499)."""


def forward_headers(
    request: web.Request, edge: Edge, *, identity: str | None, request_id: str
) -> list[tuple[str, str]]:
    """The request headers a service receives."""
    headers = request.headers
    connection = headers.get("Connection")
    named = (
        {token.strip().lower() for token in connection.split(",")} if connection else frozenset()
    )
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_DROP or lower.startswith(_IDENTITY_PREFIXES) or lower in named:
            continue
        out.append((name, value))
    remote = request.remote or ""
    prior = headers.get("X-Forwarded-For")
    if prior and edge.is_trusted(remote):
        # Services read the first hop: start the chain at the real client (the hops a client
        # wrote left of it are claims no trusted proxy vouches for).
        hops = [hop.strip() for hop in prior.split(",") if hop.strip()]
        start = next((i for i in reversed(range(len(hops))) if not edge.is_trusted(hops[i])), None)
        if start is not None:
            hops = [edge.client_ip(request), *hops[start + 1 :]]
        out.append(("X-Forwarded-For", ", ".join([*hops, remote])))
    else:
        out.append(("X-Forwarded-For", remote))
    out.append(("X-Forwarded-Proto", "https" if edge.behind_tls(request) else "http"))
    out.append(("X-Forwarded-Host", request.host))
    out.append(("X-Request-ID", request_id))
    if identity is not None:
        out.append((IDENTITY_HEADER, identity))
    return out


def filter_response_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Upstream response headers minus hop-by-hop ones (and those the gateway recomputes)."""
    kept: list[tuple[str, str]] = []
    named: set[str] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == "connection":
                named = {t.strip().lower() for t in value.split(",")}
            continue
        kept.append((name, value))
    if named:
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return CIMultiDict(kept)


def response_headers(
    upstream: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]]
) -> CIMultiDict[str]:
    """The upstream's headers to relay (`filter_response_headers`) plus the gateway's own;
    a `Vary` of both is merged into one."""
    headers = filter_response_headers(upstream)
    for name, value in extra:
        if name == "Vary" and "Vary" in headers:
            headers["Vary"] = f"{headers['Vary']}, {value}"
        else:
            headers[name] = value
    return headers


def is_compressible(content_type: str) -> bool:
    return content_type.startswith(_COMPRESSIBLE) or content_type.endswith(("+json", "+xml"))


class BodyLimit:
    """Streams the request body upstream, refusing it once it grows past `limit` bytes or when
    the client lets more than `idle` seconds pass between two chunks (a stalled upload must not
    hold a gateway request and an upstream connection forever)."""

    __slots__ = ("content", "exceeded", "idle", "limit", "seen", "timed_out")

    def __init__(self, content: aiohttp.StreamReader, limit: int, idle: float) -> None:
        self.content = content
        self.limit = limit
        self.idle = idle
        self.seen = 0
        self.exceeded = False
        self.timed_out = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self.idle):
                    chunk = await self.content.read(CHUNK)
            except TimeoutError:
                self.timed_out = True
                raise body_timeout() from None
            if not chunk:
                return
            self.seen += len(chunk)
            if self.seen > self.limit:
                self.exceeded = True
                raise PayloadTooLarge(f"the request body is limited to {self.limit} bytes")
            yield chunk


def body_timeout() -> BadRequest:
    """408: the client, not the service, was too slow (RFC 9110 §15.5.9)."""
    return BadRequest("the request body did not arrive in time", status=408)


async def send_upstream(
    request: web.Request,
    upstream: Upstream,
    route: Route,
    headers: list[tuple[str, str]],
    *,
    method: str | None = None,
    retry_backoff: float,
) -> Upstreamed:
    """Send the request to a healthy instance, retrying idempotent body-less requests on
    connection failures and 502/503 answers while the retry budget allows. Returns the response
    with its headers read; the caller releases it."""
    method = method or request.method
    body: BodyLimit | None = None
    if request.body_exists:
        body = BodyLimit(request.content, route.body_limit, route.timeout)
    # A consumed request body cannot be replayed, so only body-less idempotent requests retry.
    attempts = route.retries + 1 if method in IDEMPOTENT and body is None else 1
    fast = body is None and method in IDEMPOTENT
    upstream.budget.deposit()
    session = upstream.session
    assert session is not None
    path = request.raw_path
    error: Exception | None = None
    previous = None
    breaker = upstream.breaker
    for attempt in range(attempts):
        if attempt:
            if not upstream.budget.withdraw():
                break
            await asyncio.sleep(backoff_delay(attempt - 1, retry_backoff))
        if not breaker.allow():
            raise UpstreamUnavailable()
        instance = upstream.pick(exclude=previous)
        if instance is None:
            breaker.failure()
            raise UpstreamUnavailable()
        previous = instance
        instance.outstanding += 1
        started = time.perf_counter()
        response: Upstreamed
        try:
            if fast and instance.h1 is not None:
                response = await instance.h1.request(
                    method, path, headers, read_timeout=route.timeout
                )
            else:
                response = await session.request(
                    method,
                    instance.base + path,
                    headers=headers,
                    data=body.chunks() if body is not None else None,
                    allow_redirects=False,
                    timeout=route.client_timeout,
                )
                if unsafe_header_block(response.reason or "") or unsafe_header_block(
                    b"\r\n".join(b"%s: %s" % pair for pair in response.raw_headers)
                ):
                    # aiohttp's lenient parser keeps them (in a header or the reason phrase);
                    # its writer would refuse them to the client mid-answer. A broken upstream
                    # answer, as the keep-alive pool's.
                    response.close()
                    raise UpstreamProtocolError("control character in the response head")
        except PayloadTooLarge:
            breaker.release_probe()
            raise
        except TimeoutError:
            if body is not None and body.timed_out:
                breaker.release_probe()
                raise body_timeout() from None
            upstream.failed(instance)
            # A slow service is not retried: that would only double its load.
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            if body is not None and body.exceeded:
                breaker.release_probe()
                raise PayloadTooLarge(
                    f"the request body is limited to {route.body_limit} bytes"
                ) from None
            if body is not None and body.timed_out:  # the client stalled, not the service
                breaker.release_probe()
                raise body_timeout() from None
            upstream.failed(instance)
            _log.warning(
                "upstream failed", upstream=upstream.name, instance=instance.base,
                error=type(exc).__name__, attempt=attempt,
            )  # fmt: skip
            error = UpstreamUnavailable()
            continue
        finally:
            instance.outstanding -= 1
        UPSTREAM_TALLY.observe((upstream.name, route.template), time.perf_counter() - started)
        if response.status in (502, 503) and attempt + 1 < attempts:
            upstream.failed(instance)
            response.release()
            continue
        if response.status in (502, 503, 504):
            upstream.failed(instance)
        else:
            upstream.succeeded(instance)
        return response
    raise error if error is not None else UpstreamUnavailable()


def raw_headers(response: Upstreamed) -> Iterable[tuple[str, str]]:
    if isinstance(response, H1Response):
        return response.raw_headers
    return response.headers.items()


def body_chunks(response: Upstreamed) -> AsyncIterator[bytes]:
    if isinstance(response, H1Response):
        return response.chunks()
    return response.content.iter_chunked(CHUNK)


async def relay(
    request: web.Request,
    upstream_response: Upstreamed,
    extra_headers: list[tuple[str, str]],
    *,
    gzip_min: int,
    write_timeout: float = 60.0,
) -> web.StreamResponse:
    """Relay the upstream response to the client, streaming bodies that are large or unsized;
    a client that takes nothing for `write_timeout` seconds is disconnected."""
    try:
        headers = response_headers(raw_headers(upstream_response), extra_headers)
        status = upstream_response.status
        length = upstream_response.content_length
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        compress = (
            not no_body
            and "Content-Encoding" not in headers
            and (length is None or length >= gzip_min)
            and "gzip" in request.headers.get("Accept-Encoding", "")
            and is_compressible(headers.get("Content-Type", ""))
        )
        if compress:
            vary = headers.get("Vary")
            headers["Vary"] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
        if no_body:
            response = web.StreamResponse(status=status, reason=upstream_response.reason,
                                          headers=headers)  # fmt: skip
            if length is not None and request.method == "HEAD":
                response.content_length = length
            await response.prepare(request)
            await response.write_eof()
            return response
        if length is not None and length <= SMALL_BODY:
            body = await upstream_response.read()
            small = web.Response(status=status, reason=upstream_response.reason, body=body,
                                 headers=headers)  # fmt: skip
            if compress:
                small.enable_compression(web.ContentCoding.gzip)
            return small
        response = web.StreamResponse(status=status, reason=upstream_response.reason,
                                      headers=headers)  # fmt: skip
        if compress:
            response.enable_compression(web.ContentCoding.gzip)
        elif length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in body_chunks(upstream_response):
            try:
                async with asyncio.timeout(write_timeout):
                    await response.write(chunk)  # waits while the client's buffer is full
            except TimeoutError:
                if request.transport is not None:
                    request.transport.abort()
                raise ClientGone("the client stopped reading") from None
        await response.write_eof()
        return response
    finally:
        upstream_response.release()
