"""The lean HTTP/1.1 upstream client behind body-less GETs: framing, streaming, keep-alive."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.h1client import H1Pool, UpstreamProtocolError
from tests.gateway.conftest import assert_problem

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[int]]]:
    """A TCP server answering every request with the given raw bytes, then closing."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_chunked_response_with_extensions_and_trailers(raw_server: Any) -> None:
    port = await raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
    )
    pool = H1Pool("127.0.0.1", port, connect_timeout=2)
    response = await pool.request("GET", "/", [], read_timeout=5)
    assert (response.status, response.headers["X-A"]) == (200, "1")
    assert await response.read() == b"hello world"
    pool.close()


async def test_close_delimited_body(raw_server: Any) -> None:
    port = await raw_server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 100_000)
    pool = H1Pool("127.0.0.1", port, connect_timeout=2)
    response = await pool.request("GET", "/", [], read_timeout=5)
    assert await response.read() == b"z" * 100_000
    pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed early
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"",  # closed without answering
    ],
)
async def test_broken_responses_raise(raw_server: Any, answer: bytes) -> None:
    port = await raw_server(answer)
    pool = H1Pool("127.0.0.1", port, connect_timeout=2)
    with pytest.raises(UpstreamProtocolError):
        response = await pool.request("GET", "/", [], read_timeout=5)
        await response.read()
    pool.close()


async def test_broken_upstream_response_is_503_problem(make_gateway: Any, raw_server: Any) -> None:
    port = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    gateway = await make_gateway(orgs_urls=f"http://127.0.0.1:{port}")
    await assert_problem(await gateway.get("/api/v1/public"), 503, "UPSTREAM_UNAVAILABLE")


def download_app(size: int) -> web.Application:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = bytes(range(256)) * 4096
        sent = 0
        while sent < size:
            await response.write(block)
            sent += len(block)
        await response.write_eof()
        return response

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"s" * 1000)

    app = web.Application()
    app.router.add_get("/api/v1/files/chunked", chunked)
    app.router.add_get("/api/v1/files/sized", sized)
    app.router.add_get("/readyz", sized)
    return app


async def test_large_chunked_download_streams_and_keeps_alive(
    make_gateway: Any, aiohttp_server: Any
) -> None:
    size = 32 * MiB
    server = await aiohttp_server(download_app(size))
    gateway = await make_gateway(files_urls=f"http://127.0.0.1:{server.port}")
    response = await gateway.get("/api/v1/files/chunked", headers={"Accept-Encoding": "identity"})
    assert response.status == 200
    digest = hashlib.sha256()
    received = 0
    async for chunk in response.content.iter_chunked(MiB):
        digest.update(chunk)
        received += len(chunk)
    expected = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for _ in range(size // len(block)):
        expected.update(block)
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    # The connection went back to the pool and serves the next request.
    for _ in range(3):
        again = await gateway.get("/api/v1/files/sized")
        assert await again.read() == b"s" * 1000


async def test_upstream_restart_does_not_break_keep_alive(
    make_gateway: Any, aiohttp_server: Any
) -> None:
    server = await aiohttp_server(download_app(0))
    port = server.port
    gateway = await make_gateway(files_urls=f"http://127.0.0.1:{port}")
    assert (await gateway.get("/api/v1/files/sized")).status == 200
    await server.close()  # pooled keep-alive connections are now dead
    await aiohttp_server(download_app(0), port=port)
    assert (await gateway.get("/api/v1/files/sized")).status == 200


async def test_overlapping_requests_share_keep_alive_connections(aiohttp_server: Any) -> None:
    # A connection returns to the pool the moment its response is complete, before the request
    # that used it resumes: the next request may already be waiting on it. Every request must
    # still get its own answer, and the head-timeout watchdog must track each one.
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.query["n"])

    app = web.Application()
    app.router.add_get("/", echo)
    server = await aiohttp_server(app)
    pool = H1Pool("127.0.0.1", server.port, connect_timeout=2)

    async def one(n: int) -> str:
        response = await pool.request("GET", f"/?n={n}", [], read_timeout=5)
        try:
            return (await response.read()).decode()
        finally:
            response.release()

    async def worker(first: int) -> list[str]:
        return [await one(n) for n in range(first, first + 30)]

    answers = await asyncio.gather(*(worker(w * 100) for w in range(16)))
    assert answers == [[str(n) for n in range(w * 100, w * 100 + 30)] for w in range(16)]
    assert not pool._waiting  # nothing left for the watchdog
    pool.close()


async def test_a_silent_upstream_times_out_through_the_watchdog(raw_server: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = H1Pool("127.0.0.1", port, connect_timeout=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", [], read_timeout=0.3)
    assert 0.25 < loop.time() - started < 2.0
    assert not pool._waiting
    pool.close()
    server.close()


@pytest.mark.parametrize(
    ("block", "lines", "unsafe"),
    [
        (b"A: 1\r\nB: 2\r\n", 2, False),
        (b"A: 1\r\nB: 2", None, False),  # a received head, without its last CRLF
        (b"A: caf\xc3\xa9\tx\r\n", 1, False),  # obs-text and HTAB are allowed
        (b"A: 1\rB: 2\r\n", 1, True),  # a bare CR
        (b"A: 1\nB: 2\r\n", 1, True),  # a bare LF
        (b"A: 1\x00\r\n", 1, True),
        (b"A: 1\x7f\r\n", 1, True),
        # A value holding a whole CRLF is a header of its own: only the count can tell.
        (b"A: 1\r\nInjected: 1\r\n", 1, True),
        (b"A: 1\r\nInjected: 1\r\n", None, False),
    ],
)
def test_unsafe_header_block(block: bytes, lines: int | None, unsafe: bool) -> None:
    from gateway.h1client import unsafe_header_block

    assert unsafe_header_block(block, lines=lines) is unsafe
    text = block.decode("utf-8", "surrogateescape")
    assert unsafe_header_block(text, lines=lines) is unsafe


def test_a_header_value_holding_a_crlf_is_never_written() -> None:
    from multidict import CIMultiDict

    from gateway.front import _finish_head, _head_bytes

    with pytest.raises(ValueError, match="control character"):
        _head_bytes(429, "Too Many Requests", CIMultiDict({"X-A": "1\r\nInjected: 1"}),
                    close=False)  # fmt: skip
    with pytest.raises(ValueError, match="control character"):
        _finish_head(200, "OK", ["X-A: 1\r\nInjected: 1\r\n"], close=False)
    head = _head_bytes(429, "Too Many Requests", CIMultiDict({"Retry-After": "1"}), close=False)
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nDate: ")
