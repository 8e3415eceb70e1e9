"""A real upstream app on `aiohttp_server`, and a tiny gateway app in front of it that calls
`CacheStage.handle` with a `fetch` proxying to the upstream (as the gateway core does)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache import BufferedResponse, CachePolicy, CacheStage
from libs.common.errors import PorticoError, UpstreamTimeout, UpstreamUnavailable
from libs.common.identity import Principal

USER_HEADER = "X-Test-User"  # stands in for the gateway's authentication


class FakeClock:
    """Injectable wall clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Upstream:
    """What the service behind the gateway saw and holds."""

    hits: Counter[str] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)
    version: int = 0
    failing: bool = False  # /flaky answers 503 while set
    gate: asyncio.Event | None = None  # when set, slow endpoints wait for it
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(state: Upstream) -> web.Application:
    routes = web.RouteTableDef()

    def who(request: web.Request) -> str:
        return request.headers.get(USER_HEADER, "anonymous")

    @routes.get("/users/me")
    async def me(request: web.Request) -> web.Response:
        user = who(request)
        state.hits[request.path] += 1
        body = {"id": user, "name": state.names.get(user, user.title())}
        return web.json_response(body, headers={"Surrogate-Key": f"user:{user} org:7"})

    @routes.patch("/users/me")
    async def patch_me(request: web.Request) -> web.Response:
        user = who(request)
        state.names[user] = (await request.json())["name"]
        body = {"id": user, "name": state.names[user]}
        return web.json_response(body, headers={"Surrogate-Key": f"user:{user}"})

    @routes.get("/{name:[a-z0-9-]+}")
    async def generic(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        state.hits[name] += 1
        headers: dict[str, str] = {"Surrogate-Key": f"thing:{name}"}
        status = 200
        body = f"{name} v{state.version} {request.query_string}".encode()
        if name == "slow" or name == "gated":
            state.arrived.set()
            if state.gate is not None:
                await state.gate.wait()
            else:
                await asyncio.sleep(0.2)
        elif name == "nostore":
            headers["Cache-Control"] = "no-store"
        elif name == "private-cc":
            headers["Cache-Control"] = "private, max-age=60"
        elif name == "cookie":
            headers["Set-Cookie"] = "sid=secret; HttpOnly"
        elif name == "maxage":
            headers["Cache-Control"] = "public, max-age=5"
        elif name == "etagged":
            headers["ETag"] = '"v-upstream"'
        elif name == "missing":
            status = 404
        elif name == "broken":
            status = 500
        elif name == "flaky" and state.failing:
            status = 503
        elif name == "big":
            body = b"".join(b"line %06d of a compressible body\n" % i for i in range(3000))
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.add_routes(routes)
    return app


@dataclass
class Harness:
    upstream: Upstream
    server: TestServer
    client: TestClient[Any, Any]
    stage: CacheStage
    clock: FakeClock
    redis: aioredis.Redis
    prefix: str

    async def get(self, path: str, user: str | None = None, **headers: str) -> Any:
        send = {k.replace("_", "-"): v for k, v in headers.items()}
        if user is not None:
            send[USER_HEADER] = user
        response = await self.client.get(path, headers=send)
        body = await response.read()
        return response, body


POLICIES: dict[str, CachePolicy] = {
    "/users/me": CachePolicy(ttl=30),
    "/plain": CachePolicy(ttl=30, scope="public"),
    "/slow": CachePolicy(ttl=30, scope="public"),
    "/gated": CachePolicy(ttl=30, scope="public"),
    "/nostore": CachePolicy(ttl=30, scope="public"),
    "/private-cc": CachePolicy(ttl=30, scope="public"),
    "/cookie": CachePolicy(ttl=30, scope="public"),
    "/maxage": CachePolicy(ttl=60, scope="public"),
    "/etagged": CachePolicy(ttl=30, scope="public"),
    "/missing": CachePolicy(ttl=30, scope="public"),
    "/broken": CachePolicy(ttl=30, scope="public"),
    "/big": CachePolicy(ttl=30, scope="public"),
    "/small-cap": CachePolicy(ttl=30, scope="public", max_entry_bytes=8),
    "/paged": CachePolicy(ttl=30, scope="public", vary_query=["page"]),
    "/lang": CachePolicy(ttl=30, scope="public", vary_headers=["Accept-Language"]),
    "/resilient": CachePolicy(ttl=10, scope="public", stale_if_error=30),
    "/swr": CachePolicy(ttl=10, scope="public", stale_while_revalidate=30),
    "/flaky": CachePolicy(ttl=10, scope="public", stale_if_error=30),
}
# Some test paths reuse an upstream endpoint under another name.
ALIASES = {"/small-cap": "/plain", "/paged": "/plain", "/lang": "/plain", "/resilient": "/plain",
           "/swr": "/plain"}  # fmt: skip


def gateway_app(stage: CacheStage, upstream_url: str) -> web.Application:
    """The tiny gateway: principal from a header, cached GET/HEAD, purge after writes."""

    async def proxy(request: web.Request) -> web.StreamResponse:
        user = request.headers.get(USER_HEADER)
        principal = Principal(id=user) if user else None
        path = request.path
        forward = {USER_HEADER: user} if user else {}
        session = request.app[SESSION]
        target = upstream_url + ALIASES.get(path, path)

        async def fetch() -> BufferedResponse:
            try:
                async with session.get(target, params=request.query, headers=forward) as up:
                    body = await up.read()
                    return BufferedResponse(up.status, list(up.headers.items()), body)
            except TimeoutError:
                raise UpstreamTimeout() from None
            except aiohttp.ClientError:
                raise UpstreamUnavailable() from None

        policy = POLICIES.get(path)
        if request.method in ("GET", "HEAD") and policy is not None:
            return await stage.handle(
                request, policy=policy, principal=principal, fetch=fetch, route=path
            )
        body = await request.read()
        async with session.request(request.method, target, data=body, headers=forward) as up:
            payload = await up.read()
            await stage.purge_after_write(up.headers)
            headers = {k: v for k, v in up.headers.items() if k.lower() == "content-type"}
            return web.Response(status=up.status, body=payload, headers=headers)

    @web.middleware
    async def problems(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except PorticoError as exc:
            return web.json_response(
                exc.to_problem(None), status=exc.status, content_type="application/problem+json"
            )

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        yield
        await app[SESSION].close()

    app = web.Application(middlewares=[problems])
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


SESSION = web.AppKey("session", aiohttp.ClientSession)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(
    aiohttp_server: Any,
    aiohttp_client: Any,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> AsyncIterator[MakeHarness]:
    """Gateways (each with its own CacheStage) sharing one upstream and one Redis prefix."""
    state = Upstream()
    servers: list[TestServer] = []
    stages: list[CacheStage] = []
    listeners: list[asyncio.Task[None]] = []
    clock = FakeClock()

    async def make(
        redis: aioredis.Redis | None = None, *, listen: bool = True, **stage_options: Any
    ) -> Harness:
        if not servers:
            servers.append(await aiohttp_server(upstream_app(state)))
        server = servers[0]
        stage = CacheStage(
            redis or redis_client, key_prefix=redis_prefix, clock=clock, **stage_options
        )
        stages.append(stage)
        if listen and stage_options.get("l1_bytes"):
            subscribed = asyncio.Event()
            listeners.append(asyncio.create_task(stage.listen(ready=subscribed)))
            await subscribed.wait()
        client = await aiohttp_client(gateway_app(stage, str(server.make_url("")).rstrip("/")))
        return Harness(state, server, client, stage, clock, redis_client, redis_prefix)

    yield make
    for task in listeners:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for stage in stages:
        await stage.aclose()


def decode(body: bytes) -> Any:
    return orjson.loads(body)
