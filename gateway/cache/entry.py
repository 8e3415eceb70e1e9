"""What the cache stores: the compact binary form of a cached response, and the upstream answer
the gateway hands to the cache stage.

A HIT decodes one small fixed header, a short orjson metadata block (ETag, client headers, tags)
and slices the body: no pydantic, no JSON over the body, no compression work.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
from multidict import CIMultiDict

from gateway.h1client import unsafe_header_block

__all__ = ["BufferedResponse", "Entry", "decode_entry", "encode_entry"]

# version, flags, status, stored_at, ttl, metadata length
_HEAD = struct.Struct("!BBHddI")
_VERSION = 1
_GZIPPED = 0x01


@dataclass(slots=True)
class BufferedResponse:
    """A fully read upstream answer to a GET (what the gateway's `fetch()` returns)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class Entry:
    """A cached response; `headers` are the client-facing headers (ETag and Vary included)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes  # gzip-encoded when `gzipped`
    gzipped: bool
    etag: str
    stored_at: float
    ttl: float
    tags: list[str]
    # Built once per decoded entry and copied per answer (a C-level copy), never stored.
    prepared: CIMultiDict[str] | None = field(default=None, compare=False, repr=False)
    # The fast front end's rendering of `headers` (see `wire_headers`), never stored.
    wire: tuple[bytes, str | None] | None = field(default=None, compare=False, repr=False)

    def response_headers(self) -> CIMultiDict[str]:
        """A fresh, mutable copy of the client-facing headers."""
        if self.prepared is None:
            self.prepared = CIMultiDict(self.headers)
        return self.prepared.copy()

    def wire_headers(self) -> tuple[bytes, str | None] | None:
        """`headers` as header lines, minus `Vary` (returned apart: the edge may add `Origin`
        to it) and the security headers the gateway always sets itself; None when the entry has
        a header the gateway only sometimes replaces (so only the generic path knows the
        answer) or is one the generic path shapes (no-body statuses, no `Content-Type`)."""
        if self.wire is None:
            self.wire = _render(self)
        return None if self.wire is _UNSUITED else self.wire

    @property
    def size(self) -> int:
        return len(self.body) + 256


# Set on some answers only (TLS, CORS, rate limits, gzip) or by the writer itself: an entry
# carrying one of these is answered by the generic path, which knows who wins.
_CONDITIONAL = frozenset(
    {
        "strict-transport-security", "access-control-allow-origin", "content-encoding",
        "access-control-allow-credentials", "access-control-expose-headers", "ratelimit-limit",
        "ratelimit-remaining", "ratelimit-reset", "retry-after", "x-request-id", "age",
        "x-cache-status", "content-length", "transfer-encoding", "date", "server", "connection",
    }
)  # fmt: skip
# Always set by the gateway (gateway.edge.SECURITY_HEADERS), replacing an upstream value.
_ALWAYS = frozenset({"x-content-type-options", "x-frame-options", "referrer-policy"})


_UNSUITED: tuple[bytes, str | None] = (b"", None)


def _render(entry: Entry) -> tuple[bytes, str | None]:
    if entry.status in (204, 304) or entry.status < 200 or not entry.body:
        return _UNSUITED  # no body: HEAD and Content-Length rules are the generic path's
    lines: list[str] = []
    vary: str | None = None
    typed = False
    for name, value in entry.headers:
        lower = name.lower()
        if lower in _CONDITIONAL:
            return _UNSUITED
        if lower in _ALWAYS:
            continue
        if lower == "vary":
            if vary is not None:
                return _UNSUITED
            vary = value
            continue
        typed = typed or lower == "content-type"
        lines.append(f"{name}: {value}\r\n")
    if entry.body and not typed:
        return _UNSUITED
    text = "".join(lines)
    if unsafe_header_block(text, lines=len(lines)):
        return _UNSUITED  # the generic writer refuses it (a 500): never split a response
    return text.encode("utf-8", "surrogateescape"), vary


def encode_entry(entry: Entry) -> bytes:
    """The bytes stored in Redis."""
    meta = orjson.dumps([entry.etag, entry.headers, entry.tags])
    flags = _GZIPPED if entry.gzipped else 0
    head = _HEAD.pack(_VERSION, flags, entry.status, entry.stored_at, entry.ttl, len(meta))
    return b"".join((head, meta, entry.body))


def decode_entry(raw: bytes) -> Entry | None:
    """The entry in `raw`, or None when it is from another format version or corrupt."""
    try:
        version, flags, status, stored_at, ttl, meta_len = _HEAD.unpack_from(raw)
        if version != _VERSION:
            return None
        start = _HEAD.size
        etag, headers, tags = orjson.loads(raw[start : start + meta_len])
    except (struct.error, orjson.JSONDecodeError, ValueError, TypeError):
        return None
    return Entry(
        status=status,
        headers=[(name, value) for name, value in headers],
        body=raw[start + meta_len :],
        gzipped=bool(flags & _GZIPPED),
        etag=etag,
        stored_at=stored_at,
        ttl=ttl,
        tags=tags,
    )
