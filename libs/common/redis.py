"""redis.asyncio (hiredis parser) pool with short timeouts, as an aiohttp cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from libs.common.app import add_readiness_check

__all__ = ["REDIS", "connect_redis", "redis_ctx"]

REDIS = web.AppKey("redis", aioredis.Redis)


def connect_redis(url: str, *, timeout: float = 0.5) -> aioredis.Redis:
    """A pooled client whose calls fail fast (a slow Redis must never stall a request)."""
    client: aioredis.Redis = aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return client


def redis_ctx(url: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: create the pool, register the readiness check, close on shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = connect_redis(url)
        app[REDIS] = client

        async def ping() -> Any:
            return await client.ping()

        add_readiness_check(app, "redis", ping)
        yield
        await client.aclose()

    return ctx
