"""The fast front end (gateway/front.py) against hostile clients, over real sockets: it must be at
least as strict as aiohttp's parser, forward exactly what the aiohttp path forwards, and keep a
connection's cost bounded however the client sends or reads.

Most tests run against both fronts: the aiohttp-only gateway is the reference behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway import front
from gateway.app import GATEWAY, create_app
from gateway.settings import Settings
from libs.common.identity import IDENTITY_HEADER
from tests.gateway.conftest import MakeGateway, Signer, Upstream
from tests.hostile import address_of, send_raw
from tests.libs.common.test_malformed_http import assert_problem

FRONTS = [pytest.param({"fast_front": True}, id="fast-front"),
          pytest.param({"fast_front": False}, id="aiohttp-only")]  # fmt: skip
HOST = b"Host: portico.test\r\n"


def _get(path: bytes, *lines: bytes, close: bool = True) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\n" + HOST + b"".join(lines)
        + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    )  # fmt: skip


def _server_of(client: Any) -> web.Server:
    server = client.server.runner.server
    assert server is not None
    return server  # type: ignore[no-any-return]


# -- parsing: at least as strict as aiohttp ---------------------------------------------------


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize(
    ("first", "second"),
    [(b"Content-Type", b"content-type"), (b"User-Agent", b"USER-AGENT"), (b"ETag", b"etag"),
     (b"Server", b"Server"), (b"Max-Forwards", b"max-forwards"),
     (b"Content-Location", b"Content-Location"), (b"Content-Range", b"content-range")],
)  # fmt: skip
async def test_duplicate_singleton_headers_are_refused_not_forwarded(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any], first: bytes,
    second: bytes,
) -> None:  # fmt: skip
    # aiohttp refuses a second copy of an RFC 9110 singleton header (which one counts would be
    # up to each hop); the fast path must not forward both to the service instead.
    client = await make_gateway(**front_kind)
    raw = _get(b"/api/v1/public", first + b": a\r\n", second + b": b\r\n")
    answer = await send_raw(*address_of(client.server), raw)
    assert_problem(answer, 400, "VALIDATION_FAILED")
    assert orgs.recorder.hits == []


BARE_LINE_ENDINGS = [
    pytest.param(b"GET /api/v1/public HTTP/1.1\nHost: portico.test\n\n", id="LF only"),
    pytest.param(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\n\n", id="LF-terminated head"),
    pytest.param(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\nX-A: 1\r\n\r\n",
                 id="bare LF between headers"),
    pytest.param(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\rX-A: 1\r\n\r\n",
                 id="bare CR between headers"),
    pytest.param(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\r\nX-A: 1\n"
                 b"GET /internal/v1/x HTTP/1.1\r\n\r\n", id="request hidden behind a bare LF"),
]  # fmt: skip


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("raw", BARE_LINE_ENDINGS)
async def test_bare_cr_or_lf_line_endings_get_a_prompt_400(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any], raw: bytes
) -> None:
    # No `Connection: close`: the answer must come from the refusal, not from a timeout (the
    # fast path used to wait for a CRLF CRLF that never comes, up to the keep-alive timeout).
    client = await make_gateway(**front_kind)
    answer = await send_raw(*address_of(client.server), raw, timeout=5.0)
    assert_problem(answer, 400, "VALIDATION_FAILED")
    assert orgs.recorder.hits == []


class _CountingPattern:
    """Wraps `front._HEAD`, counting how often the head is parsed."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.calls = 0

    def match(self, data: bytes) -> re.Match[bytes] | None:
        self.calls += 1
        return self.pattern.match(data)


async def test_a_head_arriving_byte_by_byte_is_parsed_once(
    make_gateway: MakeGateway, orgs: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-running the head regex over the whole buffer on every segment made a head trickled in
    # one byte per segment cost O(n^2) CPU (~1 s for 8 KiB of tiny header lines).
    counting = _CountingPattern(front._HEAD)
    monkeypatch.setattr(front, "_HEAD", counting)
    segments = [0]
    received = front.FastFront.data_received

    def counted(self: front.FastFront, data: bytes) -> None:
        segments[0] += 1
        received(self, data)

    monkeypatch.setattr(front.FastFront, "data_received", counted)
    client = await make_gateway(fast_front=True)
    raw = _get(b"/api/v1/public", *(b"x-%d:%d\r\n" % (n, n) for n in range(40)))
    reader, writer = await asyncio.open_connection(*address_of(client.server))
    try:
        for byte in range(len(raw)):
            writer.write(raw[byte : byte + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert segments[0] > 50, "the head did not arrive in many segments"
    assert counting.calls <= 2, counting.calls


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_long_head_split_across_segments(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any]
) -> None:
    client = await make_gateway(**front_kind)
    raw = _get(b"/api/v1/public", *(b"X-Pad-%d: %s\r\n" % (n, b"p" * 60) for n in range(100)))
    assert 6000 < len(raw) < front._MAX_HEAD
    reader, writer = await asyncio.open_connection(*address_of(client.server))
    try:
        for start in range(0, len(raw), 1000):
            writer.write(raw[start : start + 1000])
            await writer.drain()
            await asyncio.sleep(0.01)
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert orgs.recorder.hits[-1]["headers"]["X-Pad-99"] == "p" * 60


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize(("count", "status"), [(120, 200), (129, 431)])
async def test_header_count_limit_is_aiohttps(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any], count: int, status: int
) -> None:
    client = await make_gateway(**front_kind)
    # Host and Connection count: `count` header lines in all. (At 128 the gateway's own
    # X-Forwarded-* would push the request past the upstream's aiohttp limit.)
    raw = _get(b"/api/v1/public", *(b"X-%d: v\r\n" % n for n in range(count - 2)))
    answer = await send_raw(*address_of(client.server), raw)
    assert answer.status == status, answer.wire[:300]


# -- identity and authentication: exactly the aiohttp path's view -----------------------------


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_client_identity_claims_are_stripped(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any]
) -> None:
    client = await make_gateway(**front_kind)
    raw = _get(
        b"/api/v1/public",
        b"X-Portico-Identity: forged\r\nx-pORTICO-identity: forged\r\nX-User-Id: 1\r\n"
        b"X-User: admin\r\nX-Principal: admin\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"x-forwarded-host: evil.test\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\nConnection: X-Secret\r\nX-Secret: s\r\n",
    )
    answer = await send_raw(*address_of(client.server), raw)
    assert answer.status == 200, answer.wire[:300]
    seen = {name.lower(): value for name, value in orgs.recorder.hits[-1]["headers"].items()}
    assert IDENTITY_HEADER.lower() not in seen
    assert not any(name.startswith(("x-user", "x-principal", "x-secret")) for name in seen)
    assert "forwarded" not in seen
    assert "x-real-ip" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "portico.test"
    assert seen["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("good_first", [True, False])
async def test_duplicate_authorization_first_one_counts_on_both_paths(
    make_gateway: MakeGateway, orgs: Upstream, signer: Signer, front_kind: dict[str, Any],
    good_first: bool,
) -> None:  # fmt: skip
    client = await make_gateway(**front_kind)
    good = b"Authorization: Bearer " + signer.token().encode() + b"\r\n"
    bad = b"authorization: Bearer not-a-token\r\n"
    raw = _get(b"/api/v1/private", *((good, bad) if good_first else (bad, good)))
    answer = await send_raw(*address_of(client.server), raw)
    if good_first:
        assert answer.status == 200, answer.wire[:300]
        assert answer.json()["principal"]["id"] == "user-1"
    else:
        assert_problem(answer, 401, "UNAUTHENTICATED")
        assert orgs.recorder.hits == []


PATHS = [
    b"//api/v1/private", b"/api/v1//private", b"/api/v1/private;x", b"/api/v1/private/",
    b"/api/v1/private/.", b"/api/v1/public/../private", b"/api/v1/public/%2e%2e/private",
    b"/api/v1/public%2f..%2fprivate", b"/api/v1/things/x/..", b"/api/v1/things/special;/../x",
    b"/api/v1/private#/../public", b"/api/v1/public?/../private", b"/internal/v1/api-keys/resolve",
    b"//internal/v1/api-keys/resolve", b"/api/v1/public\\..\\private",
]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
async def test_paths_route_exactly_as_on_the_aiohttp_path(
    make_gateway: MakeGateway, orgs: Upstream, path: bytes
) -> None:
    # No credentials: a path the fast front routed differently could reach a service unauthed.
    answers = []
    for front_kind in ({"fast_front": True}, {"fast_front": False}):
        client = await make_gateway(**front_kind)
        before = len(orgs.recorder.hits)
        answer = await send_raw(*address_of(client.server), _get(path))
        answers.append((answer.status, orgs.recorder.paths()[before:]))
    assert answers[0] == answers[1]
    assert all(not hit.partition("?")[0].endswith("private") for _, hits in answers for hit in hits)


# -- connection handling ---------------------------------------------------------------------


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_many_pipelined_requests_are_answered_in_order(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any]
) -> None:
    client = await make_gateway(**front_kind)
    count = 1500  # ~100 KiB of heads: past `_MAX_PIPELINED`, so reading pauses and resumes
    raw = b"".join(
        _get(b"/api/v1/public", b"X-Request-ID: req-%05d\r\n" % n, close=n == count - 1)
        for n in range(count)
    )
    assert len(raw) > front._MAX_PIPELINED
    reader, writer = await asyncio.open_connection(*address_of(client.server))
    try:
        sending = asyncio.create_task(_send(writer, raw))
        data = await asyncio.wait_for(reader.read(), 60)
        await sending
    finally:
        writer.close()
    ids = re.findall(rb"\r\nX-Request-ID: (req-\d+)\r\n", data)
    assert ids == [b"req-%05d" % n for n in range(count)]


async def _small_window_connection(
    client: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is tiny: the gateway soon sees it as not reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address_of(client.server))
    return await asyncio.open_connection(sock=sock)


async def _send(writer: asyncio.StreamWriter, raw: bytes) -> None:
    writer.write(raw)
    await writer.drain()


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_that_never_reads_does_not_grow_the_gateways_buffers(
    make_gateway: MakeGateway, front_kind: dict[str, Any]
) -> None:
    # Pipelined requests and no reading: aiohttp waits for each response to drain before the
    # next; the fast path kept serving, buffering every response in gateway memory.
    client = await make_gateway(**front_kind)
    server = _server_of(client)
    _, writer = await _small_window_connection(client)
    raw = _get(b"/api/v1/big", close=False) * 1000  # ~20 KiB answers: ~20 MiB in all
    sending = asyncio.create_task(_send(writer, raw))
    peak = 0
    try:
        for _ in range(40):
            await asyncio.sleep(0.1)
            transports: list[asyncio.Transport] = list(server._connections.values())
            buffered = sum(transport.get_write_buffer_size() for transport in transports)
            peak = max(peak, buffered)
    finally:
        sending.cancel()
        writer.transport.abort()
    assert peak < 1024 * 1024, f"{peak} bytes buffered for a client that does not read"


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_half_read_request_is_handed_over_intact(
    make_gateway: MakeGateway, orgs: Upstream, front_kind: dict[str, Any]
) -> None:
    client = await make_gateway(**front_kind)
    reader, writer = await asyncio.open_connection(*address_of(client.server))
    try:
        writer.write(
            _get(b"/api/v1/public", close=False)
            + b"POST /api/v1/public HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n"
            + b"Connection: close\r\n\r\nabc"
        )  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"defghij")
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2, data[:500]
    assert [(hit["method"], hit["body"]) for hit in orgs.recorder.hits] == [
        ("GET", 0), ("POST", 10)
    ]  # fmt: skip


async def test_a_trickled_head_is_cut_off_at_the_idle_timeout(
    aiohttp_server: Any, gateway_settings: Callable[..., Settings], orgs: Upstream
) -> None:
    # Slowloris: a byte now and then never completes the head; the connection still goes.
    app = create_app(gateway_settings(fast_front=True))
    server = await aiohttp_server(app, keepalive_timeout=1.0)
    reader, writer = await asyncio.open_connection(*address_of(server))
    raw = b"GET /api/v1/public HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"s" * 100
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed_after: float | None = None
    try:
        for byte in range(len(raw)):
            writer.write(raw[byte : byte + 1])
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    closed_after = loop.time() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = loop.time() - started
                break
    finally:
        writer.close()
    assert closed_after is not None, "the trickling connection was never closed"
    assert closed_after < 4.0, closed_after
    assert orgs.recorder.hits == []


async def _streaming_upstream(aiohttp_server: Any, closed: asyncio.Event) -> str:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        try:
            for _ in range(400):
                await response.write(b"z" * 64 * 1024)
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            closed.set()
            raise
        return response

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/api/v1/files/{name}", stream)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_closing_mid_response_releases_the_upstream(
    make_gateway: MakeGateway, aiohttp_server: Any, front_kind: dict[str, Any]
) -> None:
    closed = asyncio.Event()
    client = await make_gateway(files_urls=await _streaming_upstream(aiohttp_server, closed),
                                **front_kind)  # fmt: skip
    reader, writer = await asyncio.open_connection(*address_of(client.server))
    writer.write(_get(b"/api/v1/files/large", close=False))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readexactly(100_000)
    writer.transport.abort()
    await asyncio.wait_for(closed.wait(), 10)  # the upstream stream was cut, not left running
    after = await send_raw(*address_of(client.server), _get(b"/api/v1/public"))
    assert after.status == 200


# -- cache HITs: the fast front's pre-rendered answer is the generic path's ---------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/api/v1/cached", {}),
        ("HEAD", "/api/v1/cached", {}),
        ("GET", "/api/v1/big-cached", {"Accept-Encoding": "gzip"}),
        ("HEAD", "/api/v1/big-cached", {"Accept-Encoding": "gzip"}),
        ("GET", "/api/v1/big-cached", {"Accept-Encoding": "identity"}),
        ("GET", "/api/v1/big-cached", {"Accept-Encoding": "gzip", "Origin": "https://app.example"}),
        ("GET", "/api/v1/cached", {"Origin": "https://evil.example"}),
        ("GET", "/api/v1/cached", {"If-None-Match": "*"}),
    ],
)
async def test_a_cache_hit_is_answered_alike_by_both_fronts(
    make_gateway: MakeGateway, orgs: Upstream, method: str, path: str, headers: dict[str, str]
) -> None:
    options = {"cache_enabled": True, "ratelimit_enabled": True,
               "cors_origins": "https://app.example"}  # fmt: skip
    fast = await make_gateway(fast_front=True, **options)
    generic = await make_gateway(fast_front=False, **options)
    warm = await fast.get(path, headers={"Accept-Encoding": "gzip"})
    assert warm.headers["X-Cache-Status"] == "MISS"
    answers = []
    for client in (fast, generic):
        response = await client.request(
            method, path, headers={**headers, "X-Request-ID": "same-id"}
        )
        body = await response.read()
        seen = sorted(
            (name.lower(), value)
            for name, value in response.headers.items()
            if name.lower() not in ("date", "age", "ratelimit-remaining", "ratelimit-reset")
        )
        assert "Age" in response.headers or response.status == 304
        answers.append((response.status, seen, body))
    assert answers[0] == answers[1]
    _, seen, _ = answers[0]
    assert ("x-cache-status", "HIT") in seen
    assert orgs.recorder.paths().count(path) == 1  # both answered from the one entry
    if "Origin" in headers and "app" in headers["Origin"]:
        assert dict(seen)["vary"].lower() == "accept-encoding, origin"  # added to, not in place of


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_that_stops_reading_a_download_is_cut_off(
    make_gateway: MakeGateway, aiohttp_server: Any, front_kind: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # Slowloris on the way out: a client that takes none of a large response would otherwise
    # hold the gateway's request and the upstream's stream open for as long as it likes.
    closed = asyncio.Event()
    client = await make_gateway(files_urls=await _streaming_upstream(aiohttp_server, closed),
                                client_write_timeout=0.5, **front_kind)  # fmt: skip
    reader, writer = await _small_window_connection(client)
    writer.write(_get(b"/api/v1/files/large", close=False))
    try:
        await asyncio.wait_for(closed.wait(), 10)  # the upstream stream was released
        # And the client's connection was closed: what it reads now ends (EOF or a reset).
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(1 << 20), 10):
                pass
    finally:
        writer.transport.abort()
    after = await send_raw(*address_of(client.server), _get(b"/api/v1/public"))
    assert after.status == 200
    if front_kind["fast_front"]:  # a client's choice, not a gateway error: no ERROR, no 500
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        tally = client.server.app[GATEWAY].tally
        statuses = {status for (_, _, status) in [*tally._pending, *tally._children]}
        assert 499 in statuses
        assert 500 not in statuses


async def _raw_upstream(response: bytes) -> tuple[asyncio.Server, str]:
    """An upstream that answers every request with these exact bytes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("path", [b"/api/v1/cached", b"/api/v1/public"])
@pytest.mark.parametrize("value", [b"a\nInjected: 1", b"a\rInjected: 1", b"a\x00b", b"a\x1bb"])
async def test_control_characters_in_upstream_headers_never_reach_the_client(
    make_gateway: MakeGateway, front_kind: dict[str, Any], path: bytes, value: bytes
) -> None:
    server, url = await _raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: " + value
        + b"\r\nContent-Length: 2\r\n\r\nok"
    )  # fmt: skip
    async with server:
        client = await make_gateway(orgs_urls=url, cache_enabled=True, **front_kind)
        for _ in range(2):  # the second GET of the cached route would be a HIT
            raw = await send_raw(*address_of(client.server), _get(path))
            assert raw.status == 503, raw  # UPSTREAM_UNAVAILABLE, as any broken upstream answer
            assert raw.headers["content-type"] == "application/problem+json"
            assert "injected" not in raw.headers
            assert "x-a" not in raw.headers


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("where", ["header", "reason"])
@pytest.mark.parametrize("value", [b"a\rInjected: 1", b"a\x00b", b"a\x1bb", b"a\x7fb", b"a\x01b"])
async def test_control_characters_in_the_upstream_answer_to_a_post_never_reach_the_client(
    make_gateway: MakeGateway, front_kind: dict[str, Any], value: bytes, where: str
) -> None:
    # A request with a body goes through aiohttp's client, not the keep-alive GET pool. (Its
    # lenient parser reads a bare LF as a line end: two well-formed headers, relayed as such.)
    reason, header = (b"Created", value) if where == "header" else (value, b"ok")
    server, url = await _raw_upstream(
        b"HTTP/1.1 201 " + reason + b"\r\nContent-Type: text/plain\r\nX-A: " + header
        + b"\r\nContent-Length: 2\r\n\r\nok"
    )  # fmt: skip
    async with server:
        client = await make_gateway(orgs_urls=url, **front_kind)
        post = (
            b"POST /api/v1/public HTTP/1.1\r\n" + HOST + b"Content-Type: text/plain\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        )  # fmt: skip
        raw = await send_raw(*address_of(client.server), post)
        assert raw.status in (502, 503), raw
        assert raw.headers["content-type"] == "application/problem+json"
        assert "injected" not in raw.headers
        assert "x-a" not in raw.headers


@pytest.mark.parametrize(
    ("path", "headers", "before"),
    [
        ("/api/v1/private", {}, 0),  # 401: no credentials
        ("/api/v1/private", {"Authorization": "Bearer not.a.token"}, 0),  # 401: malformed
        ("/api/v1/private", {"Origin": "https://app.example"}, 0),  # 401 with CORS
        ("/api/v1/things/1", {"X-API-Key": "nonsense"}, 0),  # 401: not an API key
        ("/api/v1/unavailable", {}, 0),  # 503: nobody listens upstream
        ("/api/v1/public", {}, 20),  # 429: the anonymous burst (20) is spent
    ],
)
async def test_a_problem_is_answered_alike_by_both_fronts(
    make_gateway: MakeGateway, orgs: Upstream, redis_prefix: str, path: str,
    headers: dict[str, str], before: int,
) -> None:  # fmt: skip
    from libs.common.embedded import free_port

    options = {"ratelimit_enabled": True, "cors_origins": "https://app.example"}
    if path == "/api/v1/unavailable":
        options["orgs_urls"] = f"http://127.0.0.1:{free_port()}"
    answers = []
    for fast_front in (True, False):
        # Each its own rate-limit keys: the second front starts with the burst unspent too.
        prefix = f"{redis_prefix}{fast_front}:"
        client = await make_gateway(fast_front=fast_front, redis_prefix=prefix, **options)
        for _ in range(before):
            assert (await client.get(path)).status == 200
        response = await client.get(path, headers={**headers, "X-Request-ID": "same-id"})
        body = await response.read()
        seen = sorted(
            (name.lower(), value)
            for name, value in response.headers.items()
            if name.lower() not in ("date", "ratelimit-reset", "retry-after")
        )
        answers.append((response.status, seen, body))
    assert answers[0] == answers[1]
    status, seen, _ = answers[0]
    assert status in (401, 429, 503)
    assert ("content-type", "application/problem+json") in seen
    assert ("cache-control", "no-store") in seen


@pytest.mark.parametrize("front_kind", FRONTS)
@pytest.mark.parametrize("fast_client", [True, False])
async def test_a_control_character_in_the_upstream_reason_phrase_never_reaches_the_client(
    make_gateway: MakeGateway, front_kind: dict[str, Any], fast_client: bool
) -> None:
    # The keep-alive pool checks the whole head; aiohttp's client (fast_client=False, https
    # upstreams) keeps the reason phrase as sent: both must refuse it alike.
    server, url = await _raw_upstream(
        b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    )
    async with server:
        client = await make_gateway(orgs_urls=url, fast_client=fast_client, **front_kind)
        raw = await send_raw(*address_of(client.server), _get(b"/api/v1/public"))
        assert raw.status == 503, raw
        assert raw.headers["content-type"] == "application/problem+json"
