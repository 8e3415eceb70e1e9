"""Hostile HTTP/1.1 heads, written byte for byte over a raw socket, and the raw answer parsed.

A head carries `TOKEN` wherever it can (a header value, the line the parser chokes on), so a test
can check that the secret reaches neither the response nor a log line.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import BaseTestServer

__all__ = ["HOSTILE", "TOKEN", "Hostile", "RawAnswer", "address_of", "send_raw"]

# Looks like a JWT: what a client's Authorization header really carries.
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJob3N0aWxlIn0.c2VjcmV0LXNpZ25hdHVyZQ"
_AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@dataclass(frozen=True)
class Hostile:
    name: str
    raw: bytes
    status: int
    code: str
    # A bad method opening a connection is logged at debug only (TLS and the like knocking).
    logged_at_info: bool = True


def _head(path: bytes, *lines: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: portico.test\r\n" + b"".join(lines) + b"\r\n"


def cases(path: bytes = b"/healthz") -> list[Hostile]:
    """Every kind of head aiohttp refuses before a handler runs, aimed at `path`."""
    return [
        # One header line over the 16 KiB field limit, starting with the token.
        Hostile("oversized header line",
                _head(path, b"X-Token: " + TOKEN.encode() + b"a" * 20_000 + b"\r\n"),
                431, "HEADER_FIELDS_TOO_LARGE"),
        Hostile("too many headers",
                _head(path, _AUTH, *(b"X-Filler-%d: %s\r\n" % (n, TOKEN.encode())
                                     for n in range(300))),
                431, "HEADER_FIELDS_TOO_LARGE"),
        Hostile("malformed request line", b"GET" + TOKEN.encode() + b"\r\n\r\n",
                400, "VALIDATION_FAILED", logged_at_info=False),
        Hostile("malformed request target", b"GET " + TOKEN.encode() + b" HTTP/1.1\r\n\r\n",
                400, "VALIDATION_FAILED"),
        Hostile("unknown HTTP version", b"GET " + path + b" HTTP/7." + TOKEN.encode() + b"\r\n\r\n",
                400, "VALIDATION_FAILED"),
        Hostile("request line over the limit", _head(b"/" + TOKEN.encode() + b"a" * 9_000, _AUTH),
                400, "VALIDATION_FAILED"),
        Hostile("invalid Content-Length",
                b"POST " + path + b" HTTP/1.1\r\nHost: portico.test\r\n" + _AUTH
                + b"Content-Length: 12" + TOKEN.encode() + b"\r\n\r\n",
                400, "VALIDATION_FAILED"),
        Hostile("NUL in a header value",
                _head(path, _AUTH, b"X-Token: " + TOKEN.encode() + b"\x00tail\r\n"),
                400, "VALIDATION_FAILED"),
        Hostile("space before the colon", _head(path, b"Authorization : Bearer " + TOKEN.encode()
                                                + b"\r\n"),
                400, "VALIDATION_FAILED"),
    ]  # fmt: skip


HOSTILE = cases()


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    wire: bytes  # every byte the server sent (pipelined answers too)

    def json(self) -> Any:
        return json.loads(self.body)


def address_of(server: BaseTestServer) -> tuple[str, int]:
    """Where a started test server listens."""
    assert server.host is not None
    assert server.port is not None
    return server.host, server.port


async def send_raw(
    host: str, port: int, raw: bytes, *, timeout: float = 10.0, local_addr: str | None = None
) -> RawAnswer:
    """Write `raw`, read until the server closes, and parse the (first) response it sent."""
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(local_addr, 0) if local_addr else None
    )
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = body[: int(length)] if length else body
    return RawAnswer(int(status_line.split()[1]), headers, body, data)
