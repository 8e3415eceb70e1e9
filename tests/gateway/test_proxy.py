"""The proxy itself: streaming uploads, size limits, gzip, headers, CORS, WebSockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import load_table
from gateway.routing import RouteTableError
from gateway.settings import Settings
from tests.gateway.conftest import Upstream, assert_problem

MiB = 1024 * 1024


async def test_upload_streams_through_before_it_ends(gateway: Any, files: Upstream) -> None:
    started = files.recorder.upload_started

    async def body() -> AsyncIterator[bytes]:
        chunk = b"x" * MiB
        for _ in range(8):
            yield chunk
        # Only a streaming proxy lets the service see bytes while the client is still sending.
        await asyncio.wait_for(started.wait(), 20)
        for _ in range(24):
            yield chunk

    response = await gateway.post("/api/v1/upload", data=body())
    assert response.status == 200
    assert (await response.json())["received"] == 32 * MiB
    assert files.recorder.upload_bytes == 32 * MiB
    assert files.recorder.upload_chunks > 1


async def test_declared_oversized_body_is_413_before_reading(gateway: Any, files: Upstream) -> None:
    response = await gateway.post("/api/v1/small-upload", data=b"x" * 2048)
    await assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert files.recorder.hits == []


async def test_streamed_oversized_body_is_413(gateway: Any, files: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 600

    response = await gateway.post("/api/v1/small-upload", data=body())
    await assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert files.recorder.upload_bytes < 2400


async def test_body_within_limit_passes(gateway: Any, files: Upstream) -> None:
    response = await gateway.post("/api/v1/small-upload", data=b"z" * 1000)
    assert response.status == 200
    assert files.recorder.hits[0]["body"] == 1000


async def test_compressible_response_is_gzipped_when_accepted(gateway: Any) -> None:
    plain = await gateway.get("/api/v1/big", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    zipped = await gateway.get("/api/v1/big", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert await zipped.json() == await plain.json()


async def test_response_headers(gateway: Any) -> None:
    response = await gateway.get("/api/v1/public", headers={"X-Request-ID": "req-123"})
    headers = response.headers
    assert headers["X-Request-ID"] == "req-123"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "Strict-Transport-Security" not in headers
    assert "Surrogate-Key" not in headers  # internal cache tags stay inside
    assert (await response.json())["headers"]["X-Request-ID"] == "req-123"
    problem = await gateway.get("/api/v1/nope", headers={"X-Request-ID": "bad id\u00e9"})
    assert problem.headers["X-Request-ID"] != "bad id\u00e9"
    assert problem.headers["X-Content-Type-Options"] == "nosniff"


async def test_forwarded_headers_and_client_ip_from_trusted_proxy(
    make_gateway: Any, orgs: Upstream
) -> None:
    gateway = await make_gateway(trusted_proxies="127.0.0.1/32")
    response = await gateway.get(
        "/api/v1/public",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
    )
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    seen = orgs.recorder.hits[0]["headers"]
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Host"].startswith("127.0.0.1")


async def test_untrusted_client_cannot_claim_tls_or_an_ip(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.get(
        "/api/v1/public",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
    )
    assert "Strict-Transport-Security" not in response.headers
    seen = orgs.recorder.hits[0]["headers"]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"


async def test_cors_preflight_answered_at_the_gateway(make_gateway: Any, orgs: Upstream) -> None:
    gateway = await make_gateway(cors_origins="https://app.example")
    response = await gateway.options(
        "/api/v1/private",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "Authorization, Content-Type"},
    )  # fmt: skip
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    foreign = await gateway.options(
        "/api/v1/private",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert foreign.status == 403
    assert "Access-Control-Allow-Origin" not in foreign.headers
    simple = await gateway.get("/api/v1/public", headers={"Origin": "https://app.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert orgs.recorder.hits == [orgs.recorder.hits[0]]  # preflights never went upstream


async def test_cors_never_answers_star_with_credentials(make_gateway: Any) -> None:
    gateway = await make_gateway(cors_origins="*", cors_allow_credentials=True)
    response = await gateway.get("/api/v1/public", headers={"Origin": "https://any.example"})
    assert response.headers.get("Access-Control-Allow-Origin") != "*"
    anonymous = await make_gateway(cors_origins="*", cors_allow_credentials=False)
    response = await anonymous.get("/api/v1/public", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_websocket_is_proxied(gateway: Any) -> None:
    async with gateway.ws_connect("/api/v1/ws") as socket:
        await socket.send_str("hello")
        message = await socket.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.TEXT
        assert message.data == "orgs:hello:False"


async def test_websocket_upgrade_refused_where_not_allowed(gateway: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError):
        async with gateway.ws_connect("/api/v1/public"):
            pass


class FakeDecision:
    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "1"}

    def header_items(self) -> list[tuple[str, str]]:
        return list(self.headers().items())


class FakeRateLimit:
    """A stand-in for gateway/ratelimit's stage, to check the gateway calls it as agreed."""

    folds_revocation = False  # the gateway checks tokens itself

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str, str | None]] = []

    async def evaluate(self, *, route_policy: str | None, client_ip: str, principal: Any,
                       revocation: Any = None) -> FakeDecision:  # fmt: skip
        self.calls.append((route_policy, client_ip, principal.id if principal else None))
        if route_policy == "deny":
            from libs.common.errors import RateLimited

            raise RateLimited(headers={"Retry-After": "1"})
        return FakeDecision()

    async def usage(self, *, principal: Any, client_ip: str) -> dict[str, Any]:
        return {"tier": "anonymous", "client_ip": client_ip}


async def test_rate_limit_stage_hook(make_gateway: Any, orgs: Upstream) -> None:
    stage = FakeRateLimit()
    gateway = await make_gateway(stages={"ratelimit": stage})
    response = await gateway.get("/api/v1/public")
    assert response.headers["RateLimit-Remaining"] == "9"
    assert stage.calls == [(None, "127.0.0.1", None)]
    usage = await gateway.get("/api/v1/usage")
    assert await usage.json() == {"tier": "anonymous", "client_ip": "127.0.0.1"}
    assert orgs.recorder.paths() == ["/api/v1/public"]  # usage is answered by the gateway


async def test_access_log_line_per_request_without_secrets(
    make_gateway: Any, signer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import orjson

    from gateway.app import GATEWAY

    gateway = await make_gateway(access_log=True)
    token = signer.token("user-42")
    await gateway.get("/api/v1/things/7", headers={"Authorization": f"Bearer {token}",
                                                  "X-Request-ID": "log-1"})  # fmt: skip
    access_log = gateway.server.app[GATEWAY].access_log
    assert access_log is not None
    access_log.flush()
    out = capsys.readouterr().out
    lines = [orjson.loads(line) for line in out.splitlines() if '"event":"request"' in line]
    assert lines == [
        {
            "request_id": "log-1", "method": "GET", "route": "/api/v1/things/{id}",
            "status": 200, "duration_ms": lines[0]["duration_ms"], "principal_id": "user-42",
            "event": "request", "service": "gateway", "level": "info",
            "timestamp": lines[0]["timestamp"],
        }
    ]  # fmt: skip
    assert token not in out


async def test_cache_stage_wiring_purges_on_write(make_gateway: Any, orgs: Upstream) -> None:
    pytest.importorskip("gateway.cache")
    gateway = await make_gateway(cache_enabled=True)
    first = await gateway.get("/api/v1/cached")
    second = await gateway.get("/api/v1/cached")
    assert (first.status, second.status) == (200, 200)
    assert first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "HIT"
    assert orgs.recorder.paths() == ["/api/v1/cached"]
    # A write whose response names the entry's tag (`Surrogate-Key: user:1`) purges it first.
    assert (await gateway.post("/api/v1/public", json={})).status == 200
    third = await gateway.get("/api/v1/cached")
    assert third.headers["X-Cache-Status"] == "MISS"
    assert orgs.recorder.paths() == ["/api/v1/cached", "/api/v1/public", "/api/v1/cached"]


async def test_rate_limit_stage_wiring(make_gateway: Any, signer: Any, orgs: Upstream) -> None:
    pytest.importorskip("gateway.ratelimit")
    gateway = await make_gateway(ratelimit_enabled=True)

    async def decisions() -> tuple[float, float]:
        """Decisions timed, and decisions that allowed a request (any policy)."""
        metrics = await (await gateway.get("/metrics")).text()
        prefix = "gateway_ratelimit_decision_seconds_count "
        timed = float(
            next(line for line in metrics.splitlines() if line.startswith(prefix))[len(prefix) :]
        )
        allowed = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("gateway_ratelimit_decisions_total{") and 'result="allowed"' in line
        )  # fmt: skip
        return timed, allowed

    before = await decisions()
    statuses = [(await gateway.post("/api/v1/login", json={})).status for _ in range(11)]
    assert statuses == [200] * 10 + [429]  # the `login` policy: 10 per minute, burst 10
    limited = await gateway.post("/api/v1/login", json={})
    await assert_problem(limited, 429, "RATE_LIMITED")
    assert "Retry-After" in limited.headers
    ok = await gateway.get("/api/v1/public")
    assert "RateLimit-Limit" in ok.headers
    # Decision times and counts are batched in the process; a scrape sees every one at once.
    after = await decisions()
    assert after[0] - before[0] >= 13  # 12 logins and one GET (a shared registry)
    assert after[1] - before[1] >= 11  # 10 logins and one GET allowed
    usage = await gateway.get(
        "/api/v1/usage", headers={"Authorization": f"Bearer {signer.token('u-usage')}"}
    )
    assert usage.status == 200
    assert "rate" in await usage.json()
    assert len([p for p in orgs.recorder.paths() if p == "/api/v1/login"]) == 10


def test_unknown_rate_policy_is_named(tmp_path: Path) -> None:
    pytest.importorskip("gateway.ratelimit")
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - {path: /a, methods: [GET], upstream: orgs, rate: nope}\n")
    with pytest.raises(RouteTableError, match=r"routes\[0\].*unknown rate policy 'nope'"):
        load_table(Settings(), path)
