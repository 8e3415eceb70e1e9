"""Real upstream apps on `aiohttp_server` (a users-like app with a JWKS and API keys, and echo
services that record what reached them) and a factory for gateways in front of them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.app import create_app
from gateway.settings import Settings
from libs.common.identity import IDENTITY_HEADER, IdentityError, verify_identity
from tests.conftest import TEST_SECRET

TEST_ROUTES = """
defaults: {timeout: 5, retries: 1, body_limit: 1MiB}
routes:
  - {path: /.well-known/jwks.json, methods: [GET], upstream: users, auth: none}
  - {path: /api/v1/public, methods: [GET, POST], upstream: orgs, auth: none}
  - {path: /api/v1/optional, methods: [GET], upstream: orgs, auth: optional}
  - {path: /api/v1/private, methods: [GET, POST], upstream: orgs}
  - {path: "/api/v1/things/{id}", methods: [GET], upstream: orgs, scopes: ["things:read"]}
  - {path: "/api/v1/things/{id}", methods: [PUT, DELETE], upstream: orgs,
     scopes: ["things:write"]}
  - {path: /api/v1/things/special, methods: [GET], upstream: orgs, auth: none}
  - {path: /api/v1/users-only, methods: [GET], upstream: orgs, api_keys: false}
  - {path: /api/v1/slow, methods: [GET], upstream: orgs, auth: none, timeout: 0.3}
  - {path: /api/v1/unavailable, methods: [GET, POST], upstream: orgs, auth: none, retries: 2}
  - {path: /api/v1/big, methods: [GET], upstream: orgs, auth: none}
  - {path: /api/v1/upload, methods: [POST], upstream: files, auth: none, body_limit: 300MiB,
     timeout: 60}
  - {path: /api/v1/small-upload, methods: [POST], upstream: files, auth: none, body_limit: 1KiB}
  - {path: /api/v1/files/*, methods: [GET], upstream: files, auth: none}
  - {path: /api/v1/ws, methods: [GET], upstream: orgs, auth: none, websocket: true}
  - {path: /api/v1/usage, methods: [GET], upstream: gateway, handler: usage, auth: optional}
  - {path: /api/v1/login, methods: [POST], upstream: orgs, auth: none, rate: login}
  - {path: /api/v1/cached, methods: [GET], upstream: orgs, auth: optional,
     cache: {ttl: 30, scope: public}}
  - {path: /api/v1/big-cached, methods: [GET], upstream: orgs, auth: none,
     cache: {ttl: 30, scope: public}}
"""


@dataclass
class Signer:
    """The test's users-service signing keys and a token factory."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)

    def add_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = Ed25519PrivateKey.generate()
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"})
        return {"keys": keys}

    def claims(self, sub: str = "user-1", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "portico", "aud": "portico-api", "sub": sub, "iat": now, "nbf": now,
            "exp": now + 900, "jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex,
            "roles": ["user"],
        }  # fmt: skip
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str = "user-1", *, kid: str = "k1", **overrides: Any) -> str:
        return jwt.encode(
            self.claims(sub, **overrides), self.keys[kid], algorithm="EdDSA", headers={"kid": kid}
        )

    def public_pem(self, kid: str = "k1") -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: `alg: none` (secret None) or HMAC with `secret`."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@dataclass
class Recorder:
    """What one upstream instance saw."""

    name: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    jwks_fetches: int = 0
    resolves: int = 0
    upload_chunks: int = 0
    upload_bytes: int = 0
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    api_keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def paths(self) -> list[str]:
        return [hit["path"] for hit in self.hits]


def upstream_app(recorder: Recorder, signer: Signer | None = None) -> web.Application:
    """An upstream service that echoes what reached it."""
    routes = web.RouteTableDef()

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    @routes.get("/openapi.json")
    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "openapi": "3.1.0",
                "info": {"title": recorder.name, "version": "1"},
                "paths": {
                    "/api/v1/users/me": {
                        "get": {
                            "summary": "The caller's own profile",
                            "responses": {
                                "200": {
                                    "description": "the user",
                                    "content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/UserPublic"}
                                    }},
                                }
                            },
                        }
                    }
                },
                "components": {"schemas": {"UserPublic": {
                    "type": "object", "properties": {"id": {"type": "string"}}
                }}},
            }
        )  # fmt: skip

    @routes.get("/.well-known/jwks.json")
    async def jwks(_: web.Request) -> web.Response:
        recorder.jwks_fetches += 1
        assert signer is not None
        return web.json_response(signer.jwks())

    @routes.post("/internal/v1/api-keys/resolve")
    async def resolve(request: web.Request) -> web.Response:
        recorder.resolves += 1
        try:
            caller = verify_identity(request.headers.get(IDENTITY_HEADER, ""), TEST_SECRET)
        except IdentityError:
            return web.json_response({"code": "UNAUTHENTICATED"}, status=401)
        if caller.kind != "service":
            return web.json_response({"code": "FORBIDDEN"}, status=403)
        body = await request.json()
        found = recorder.api_keys.get(body.get("key"))
        if found is None:
            return web.json_response({"code": "NOT_FOUND"}, status=404)
        return web.json_response(found)

    @routes.get("/api/v1/slow")
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    @routes.route("*", "/api/v1/unavailable")
    async def unavailable(request: web.Request) -> web.Response:
        recorder.hits.append({"path": request.path, "method": request.method})
        return web.json_response({"code": "UPSTREAM_UNAVAILABLE"}, status=503)

    @routes.get("/api/v1/big")
    @routes.get("/api/v1/big-cached")
    async def big(request: web.Request) -> web.Response:
        recorder.hits.append({"path": request.path, "method": request.method})
        return web.json_response({"items": [{"n": i, "text": "portico " * 4} for i in range(400)]})

    @routes.post("/api/v1/upload")
    async def upload(request: web.Request) -> web.Response:
        recorder.hits.append({"path": request.path, "method": request.method})
        async for chunk in request.content.iter_any():
            recorder.upload_chunks += 1
            recorder.upload_bytes += len(chunk)
            recorder.upload_started.set()
        return web.json_response({"received": recorder.upload_bytes})

    @routes.get("/api/v1/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        identity = request.headers.get(IDENTITY_HEADER)
        async for message in socket:
            await socket.send_str(f"{recorder.name}:{message.data}:{identity is not None}")
        return socket

    @routes.route("*", "/{tail:.*}")
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        recorder.hits.append(
            {"path": request.path_qs, "method": request.method, "headers": dict(request.headers),
             "body": len(body)}
        )  # fmt: skip
        identity = request.headers.get(IDENTITY_HEADER)
        principal = None
        if identity:
            who = verify_identity(identity, TEST_SECRET)
            principal = {"id": who.id, "kind": who.kind, "scopes": list(who.scopes)}
        return web.json_response(
            {"upstream": recorder.name, "path": request.path_qs, "principal": principal,
             "headers": dict(request.headers)},
            headers={"Surrogate-Key": "user:1", "Connection": "keep-alive"},
        )  # fmt: skip

    app = web.Application()
    app.add_routes(routes)
    return app


@dataclass
class Upstream:
    recorder: Recorder
    server: TestServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def signer() -> Signer:
    signer = Signer()
    signer.add_key("k1")
    return signer


@pytest.fixture
def start_upstream(aiohttp_server: Any, signer: Signer) -> StartUpstream:
    async def start(name: str, *, port: int | None = None, recorder: Recorder | None = None
                    ) -> Upstream:  # fmt: skip
        recorder = recorder or Recorder(name)
        server = await aiohttp_server(upstream_app(recorder, signer), port=port)
        return Upstream(recorder, server)

    return start


@pytest.fixture
async def users(start_upstream: StartUpstream) -> Upstream:
    return await start_upstream("users")


@pytest.fixture
async def orgs(start_upstream: StartUpstream) -> Upstream:
    return await start_upstream("orgs")


@pytest.fixture
async def files(start_upstream: StartUpstream) -> Upstream:
    return await start_upstream("files")


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(TEST_ROUTES)
    return path


@pytest.fixture
def gateway_settings(
    users: Upstream, orgs: Upstream, files: Upstream, routes_file: Path, redis_prefix: str,
    redis_url: str,
) -> Callable[..., Settings]:  # fmt: skip
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "users_urls": users.url, "orgs_urls": orgs.url, "files_urls": files.url,
            "routes_file": routes_file, "redis_prefix": redis_prefix, "redis_url": redis_url,
            "internal_secret": TEST_SECRET, "environment": "test", "health_interval": 60,
            "circuit_open_seconds": 0.2, "retry_backoff_seconds": 0.001, "access_log": False,
            "jwks_min_refresh_seconds": 0, "cache_enabled": False,
            "ratelimit_enabled": False,
        }  # fmt: skip
        values.update(overrides)
        return Settings(**values)

    return build


MakeGateway = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_gateway(aiohttp_client: Any, gateway_settings: Callable[..., Settings]) -> MakeGateway:
    async def make(*, stages: dict[str, Any] | None = None, **overrides: Any) -> Any:
        app = create_app(gateway_settings(**overrides), **(stages or {}))
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> TestClient[web.Request, web.Application]:
    return await make_gateway()


async def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await response.json(content_type=None)
    assert response.status == status, body
    assert response.content_type == "application/problem+json"
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body
