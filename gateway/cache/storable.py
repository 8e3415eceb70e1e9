"""HTTP caching rules (RFC 9111): what may be stored, for how long, as which entry; ETags,
conditional requests and gzip."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Callable

from aiohttp import web

from gateway.cache.entry import BufferedResponse, Entry
from gateway.cache.policy import CachePolicy, parse_cache_control

__all__ = [
    "CACHEABLE_STATUS",
    "COMPRESS_MIN_BYTES",
    "DROPPED_HEADERS",
    "NOT_MODIFIED_HEADERS",
    "accepts_gzip",
    "build_entry",
    "etag_matches",
    "etag_of",
    "gunzip_body",
    "gzip_body",
    "off_loop",
]

# RFC 9110 section 15.1: heuristically cacheable statuses.
CACHEABLE_STATUS = frozenset({200, 203, 204, 300, 301, 404, 410})
# Never stored: hop-by-hop, per-client, per-request, or recomputed on every answer.
DROPPED_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade", "set-cookie", "surrogate-key",
        "surrogate-control", "content-length", "content-encoding", "etag", "date", "age",
        "x-request-id", "x-cache-status", "server",
    }
)  # fmt: skip
# RFC 9110 section 15.4.5: what a 304 carries.
NOT_MODIFIED_HEADERS = frozenset({"cache-control", "content-location", "expires", "vary", "etag"})
COMPRESS_MIN_BYTES = 1024
MAX_TAGS = 64
MAX_TAG_LENGTH = 200
EXECUTOR_MIN_BYTES = 128 * 1024


def gzip_body(body: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def gunzip_body(body: bytes) -> bytes:
    return zlib.decompress(body, 31)


async def off_loop(func: Callable[[bytes], bytes], data: bytes) -> bytes:
    """Small payloads inline; large ones in the executor so the loop never stalls."""
    if len(data) < EXECUTOR_MIN_BYTES:
        return func(data)
    return await asyncio.get_running_loop().run_in_executor(None, func, data)


def accepts_gzip(request: web.Request) -> bool:
    value = request.headers.get("Accept-Encoding")
    if not value or "gzip" not in value.lower():
        return False
    for part in value.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 section 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    plain = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == plain for tag in if_none_match.split(","))


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


async def build_entry(
    response: BufferedResponse, policy: CachePolicy, *, now: float
) -> Entry | None:
    """The entry to store for `response`, or None when it must not be stored."""
    if response.status not in CACHEABLE_STATUS or len(response.body) > policy.max_entry_bytes:
        return None
    headers: list[tuple[str, str]] = []
    etag: str | None = None
    encoding: str | None = None
    directives: dict[str, str | None] = {}
    tags: list[str] = []
    vary: list[str] = []
    for name, value in response.headers:
        lower = name.lower()
        if lower == "set-cookie":
            return None
        if lower == "cache-control":
            directives.update(parse_cache_control(value))
        elif lower == "etag":
            etag = value
        elif lower == "content-encoding":
            encoding = value.strip().lower()
        elif lower == "surrogate-key":
            tags.extend(value.split())
        elif lower == "vary":
            vary.extend(v.strip().lower() for v in value.split(","))
            continue
        if lower not in DROPPED_HEADERS:
            headers.append((name, value))
    if "no-store" in directives or "no-cache" in directives or "*" in vary:
        return None
    if policy.scope == "public" and "private" in directives:
        return None
    if encoding not in (None, "identity", "gzip"):
        return None
    ttl = policy.ttl
    for directive in ("s-maxage", "max-age"):
        if directive in directives:
            try:
                ttl = min(ttl, float(directives[directive] or ""))
            except ValueError:
                return None
            break
    if ttl <= 0:
        return None
    body = response.body
    gzipped = encoding == "gzip"
    if gzipped:
        etag = etag or etag_of(await off_loop(gunzip_body, body))
    else:
        etag = etag or etag_of(body)
        if len(body) >= COMPRESS_MIN_BYTES:
            packed = await off_loop(gzip_body, body)
            if len(packed) < len(body) * 0.9:
                body, gzipped = packed, True
    if gzipped:
        vary.append("accept-encoding")
    headers.append(("ETag", etag))
    vary = list(dict.fromkeys(v for v in vary if v))
    if vary:
        headers.append(("Vary", ", ".join(vary)))
    return Entry(
        status=response.status,
        headers=headers,
        body=body,
        gzipped=gzipped,
        etag=etag,
        stored_at=now,
        ttl=ttl,
        # Bounded: a hostile or buggy upstream must not make one store script unbounded.
        tags=[tag for tag in dict.fromkeys(tags) if len(tag) <= MAX_TAG_LENGTH][:MAX_TAGS],
    )
