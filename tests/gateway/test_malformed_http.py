"""The gateway answers heads aiohttp refuses with problem+json and the edge's security headers,
over a real socket, whichever front end reads the connection; no log line repeats the head."""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

import pytest

from libs.common.logging import configure_logging
from tests.gateway.conftest import MakeGateway
from tests.hostile import TOKEN, Hostile, address_of, cases, send_raw
from tests.libs.common.test_malformed_http import assert_problem

# Aimed at a proxied route that needs no credentials: the kind of request the fast front end
# (gateway/front.py, when enabled) serves itself before handing anything else to aiohttp.
HOSTILE = cases(b"/api/v1/public")
FRONTS = [pytest.param({"fast_front": True}, id="fast-front"),
          pytest.param({"fast_front": False}, id="aiohttp-only")]  # fmt: skip


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: h.name)
async def test_malformed_heads_get_problem_json_and_no_log_line_quotes_them(
    make_gateway: MakeGateway,
    front: dict[str, Any],
    hostile: Hostile,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_gateway(**front)
    configure_logging(level="DEBUG", json=True, service="gateway")
    caplog.set_level(logging.DEBUG)
    host, port = address_of(client.server)
    answer = await send_raw(host, port, hostile.raw)
    body = assert_problem(answer, hostile.status, hostile.code)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    out = capsys.readouterr().out
    assert f'"request_id":"{body["request_id"]}"' in out, out[-2000:]
    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info!r}" for r in caplog.records
    )
    for logged in (out, records):
        assert TOKEN not in logged
        assert TOKEN[:12] not in logged
    # The refusal closed only that connection.
    raw = b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\r\nConnection: close\r\n\r\n"
    after = await send_raw(host, port, raw)
    assert after.status == 200, after


@pytest.mark.parametrize("front", FRONTS)
async def test_a_refusal_after_a_good_request_on_the_same_connection(
    make_gateway: MakeGateway, front: dict[str, Any]
) -> None:
    client = await make_gateway(**front)
    host, port = address_of(client.server)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        await reader.readexactly(length)
        writer.write(b"GET /api/v1/public HTTP/1.1\r\nHost: portico.test\r\nX-Token: "
                     + TOKEN.encode() + b"\x00\r\n\r\n")  # fmt: skip
        refusal = await asyncio.wait_for(reader.read(), 10)  # to EOF: the connection is closed
    finally:
        writer.close()
    assert refusal.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), refusal[:300]
    assert b"application/problem+json" in refusal
    assert TOKEN.encode() not in refusal


async def test_encoded_bodies_are_relayed_as_sent(make_gateway: MakeGateway, orgs: Any) -> None:
    # The service decodes (and refuses an undecodable body with a 400 of its own); a gateway that
    # decoded would relay decoded bytes under the client's Content-Encoding and Content-Length.
    client = await make_gateway()
    body = gzip.compress(b'{"text": "' + b"x" * 5000 + b'"}')
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with client.post("/api/v1/public", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        echoed = await resp.json()
    hit = orgs.recorder.hits[-1]
    assert hit["body"] == 5012  # the upstream's aiohttp decoded exactly what the client sent
    assert echoed["headers"]["Content-Encoding"] == "gzip"
    assert echoed["headers"]["Content-Length"] == str(len(body))
