"""One benchmark target: `ceiling` (a constant response), `cache` / `cache-l1` (CacheStage HITs
through a minimal aiohttp app) or `upstream` (the origin nginx caches).

    .venv/bin/python -m bench.cache.server MODE PORT [REDIS_URL PREFIX]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import orjson
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from gateway.cache import BufferedResponse, CachePolicy, CacheStage
from gateway.revocation import MGetClient
from libs.common.identity import Principal

BODY = orjson.dumps(
    {"id": "u_42", "email": "alice@example.com", "name": "Alice Example", "roles": ["user"],
     "created_at": "2026-01-01T00:00:00Z", "org_ids": ["o_1", "o_2", "o_3"],
     "bio": "x" * 300}
)  # fmt: skip
HEADERS = [("Content-Type", "application/json"), ("Surrogate-Key", "user:u_42 org:o_1"),
           ("Cache-Control", "max-age=3600")]  # fmt: skip


def constant_app() -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=BODY, headers=HEADERS[:1] + HEADERS[2:])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def cache_app(redis_url: str, prefix: str, l1_bytes: int) -> web.Application:
    policy = CachePolicy(ttl=3600, scope="private")
    principal = Principal(id="u_42")
    upstream = BufferedResponse(status=200, headers=HEADERS, body=BODY)

    async def fetch() -> BufferedResponse:
        return upstream

    async def stage_ctx(app: web.Application) -> object:
        client = aioredis.from_url(redis_url)
        reader = MGetClient(redis_url)  # the gateway's pipelined MGET connection
        stage = app[STAGE] = CacheStage(client, key_prefix=prefix, l1_bytes=l1_bytes, reader=reader)
        listening = stage.ctx()(app)  # the L1's purge subscription (a no-op without L1)
        await anext(listening)
        yield
        with contextlib.suppress(StopAsyncIteration):
            await anext(listening)
        reader.close()
        await client.aclose()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[STAGE].handle(
            request, policy=policy, principal=principal, fetch=fetch, route="/api/v1/users/me"
        )

    app = web.Application()
    app.cleanup_ctx.append(stage_ctx)
    app.router.add_get("/{tail:.*}", handler)
    return app


STAGE = web.AppKey("stage", CacheStage)


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode in ("ceiling", "upstream"):
        app = constant_app()
    else:
        app = cache_app(sys.argv[3], sys.argv[4], l1_bytes=8 << 20 if mode == "cache-l1" else 0)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop, reuse_port=True
    )


if __name__ == "__main__":
    main()
