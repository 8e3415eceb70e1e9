"""Heads aiohttp refuses before any middleware runs are answered with problem+json, over a real
socket, and neither the answer nor a log line repeats what the client sent."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import BaseModel

from libs.common.app import create_service_app
from libs.common.http import json_response, parse
from libs.common.logging import configure_logging
from libs.common.protocol import answer_malformed_http
from libs.common.settings import BaseServiceSettings
from tests.conftest import TEST_SECRET
from tests.hostile import HOSTILE, TOKEN, Hostile, RawAnswer, address_of, send_raw

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(answer: RawAnswer, status: int, code: str) -> dict[str, Any]:
    """A contract problem+json that says nothing of the request it refuses (`send_raw` read it
    to EOF: the server closed the connection)."""
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/problem+json", answer
    body: dict[str, Any] = answer.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert (body["status"], body["code"], body["type"]) == (status, code, "about:blank")
    assert body["request_id"] == answer.headers["x-request-id"]
    text = answer.body.decode()
    for leak in (TOKEN, TOKEN[:12], "aiohttp", "Traceback", "message=", "b'"):
        assert leak not in text, (leak, text)
    return body


class Note(BaseModel):
    text: str = ""


async def create_note(request: web.Request) -> web.Response:
    return json_response(await parse(request, Note), status=201)


@pytest.fixture
async def service(aiohttp_server: Any) -> TestServer:
    settings = BaseServiceSettings(service_name="malformed-test", internal_secret=TEST_SECRET)
    app = create_service_app(settings)
    app.router.add_post("/notes", create_note)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: h.name)
async def test_malformed_heads_get_problem_json_and_no_log_line_quotes_them(
    service: TestServer,
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging(level="DEBUG", json=True, service="malformed-test")
    caplog.set_level(logging.DEBUG)  # aiohttp's own loggers (aiohttp.server), at every level
    answer = await send_raw(*address_of(service), hostile.raw)
    body = assert_problem(answer, hostile.status, hostile.code)
    out = capsys.readouterr().out
    # The refusal is logged (so this check can fail), by kind and request id only.
    assert f'"request_id":"{body["request_id"]}"' in out, out[-2000:]
    assert "malformed request" in out
    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info!r}" for r in caplog.records
    )
    for logged in (out, records):
        assert TOKEN not in logged
        assert TOKEN[:12] not in logged


async def test_a_header_line_the_gateway_accepts_is_accepted(service: TestServer) -> None:
    # The gateway forwards header lines up to 16 KiB; a service must not refuse what it forwards.
    raw = (
        b"GET /healthz HTTP/1.1\r\nHost: portico.test\r\nConnection: close\r\n"
        b"Cookie: c=" + b"x" * 12_000 + b"\r\n\r\n"
    )
    answer = await send_raw(*address_of(service), raw)
    assert answer.status == 200
    assert answer.json() == {"status": "ok"}


async def test_an_exception_escaping_the_app_is_problem_json_without_its_message(
    aiohttp_server: Any,
) -> None:
    # Apps built by create_service_app catch everything in error_middleware; a bare app shows
    # what the protocol does with an exception that gets past every middleware.
    async def explode(_: web.Request) -> web.Response:
        raise RuntimeError(f"token {TOKEN} in a message")

    app = web.Application()
    app.router.add_get("/explode", explode)
    answer_malformed_http(app)
    server: TestServer = await aiohttp_server(app)
    raw = b"GET /explode HTTP/1.1\r\nHost: portico.test\r\nX-Request-ID: trace-42\r\n\r\n"
    answer = await send_raw(*address_of(server), raw)
    body = assert_problem(answer, 500, "INTERNAL")
    assert body["request_id"] == "trace-42"


async def test_extra_headers_are_added_to_every_refusal(aiohttp_server: Any) -> None:
    app = web.Application()
    answer_malformed_http(app, headers=[("X-Content-Type-Options", "nosniff")])
    server: TestServer = await aiohttp_server(app)
    answer = await send_raw(*address_of(server), b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    assert_problem(answer, 400, "VALIDATION_FAILED")
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        pytest.param("Content-Encoding: gzip", TOKEN.encode(), id="undecodable gzip"),
        pytest.param("Transfer-Encoding: chunked", b"Z" + TOKEN.encode() + b"\r\n{}\r\n0\r\n\r\n",
                     id="bad chunk size"),
    ],
)  # fmt: skip
async def test_a_broken_body_is_a_400_problem_not_a_500(
    service: TestServer, encoding: str, body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="DEBUG", json=True, service="malformed-test")
    length = f"Content-Length: {len(body)}\r\n" if "gzip" in encoding else ""
    raw = (
        f"POST /notes HTTP/1.1\r\nHost: portico.test\r\nContent-Type: application/json\r\n"
        f"{encoding}\r\n{length}Connection: close\r\n\r\n"
    ).encode() + body
    answer = await send_raw(*address_of(service), raw)
    assert_problem(answer, 400, "VALIDATION_FAILED")
    out = capsys.readouterr().out
    assert "unhandled error" not in out
    assert TOKEN[:12] not in out
