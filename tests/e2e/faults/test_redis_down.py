"""Redis (limiter, cache, revocation store) killed and restarted: requests keep flowing with the
limiter in `local` mode and the cache bypassed, and shared mode and cache hits come back after."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.faults.conftest import (
    PASSWORD,
    assert_clean_failure,
    register,
    running_stack,
    signed_in,
    unique_email,
)
from tests.e2e.stack import Stack, eventually

LOGIN_BURST = 4


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path,
        own_redis=True,
        policies={
            "anonymous": {"rate": 1000, "burst": 1000},
            "login": {"rate": 1, "per": 3600, "burst": LOGIN_BURST},
        },
        # Availability over instant revocation while Redis is away (the default is `closed`).
        extra_env={"PORTICO_GATEWAY_REVOCATION_ON_ERROR": "open"},
    ) as running:
        yield running


async def limiter_mode(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.get(f"{stack.gateway}/metrics") as resp:
        text = await resp.text()
    modes = re.findall(r'^gateway_ratelimit_mode\{mode="(\w+)"\} 1\.0$', text, re.MULTILINE)
    return modes[0] if modes else ""


async def cache_status(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> str:
    async with http.get(url, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers.get("X-Cache-Status", "")


async def bad_login(http: aiohttp.ClientSession, stack: Stack, email: str) -> int:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD + "x"}
    ) as resp:
        body = await resp.json(content_type=None)
        assert_clean_failure(resp.status, resp.content_type, body, {401, 429, 503})
        return resp.status


async def test_redis_outage_falls_back_to_local_limits_and_bypasses_the_cache(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert stack.redis is not None
    _, auth = await signed_in(http, stack)  # one login: the policy has LOGIN_BURST - 1 left
    me = f"{stack.gateway}/api/v1/users/me"
    await cache_status(http, me, auth)
    assert await cache_status(http, me, auth) == "HIT"
    assert await limiter_mode(http, stack) == "redis"

    await asyncio.to_thread(stack.redis.stop, kill=True)
    try:
        # Requests keep flowing: the cached route answers from the service, not from the cache.
        statuses = {await cache_status(http, me, auth) for _ in range(5)}
        assert statuses == {"BYPASS"}
        status, _ = await register(http, stack, unique_email("nored"))
        assert status == 201
        # The limiter decides locally, so a tight policy still throttles (the local table
        # starts empty: a full burst is allowed, then 429s).
        attempts = [await bad_login(http, stack, unique_email("x")) for _ in range(LOGIN_BURST + 3)]
        assert 429 in attempts
        assert attempts.index(429) >= 1
        assert await limiter_mode(http, stack) == "local"
    finally:
        await asyncio.to_thread(stack.redis.start)

    async def shared_again() -> bool:
        async with http.get(f"{stack.gateway}/.well-known/jwks.json") as resp:
            assert resp.status == 200
        return await limiter_mode(http, stack) == "redis"

    assert await eventually(shared_again, timeout=30)

    async def hits_again() -> bool:
        return await cache_status(http, me, auth) == "HIT"

    assert await eventually(hits_again, timeout=30)
    # Shared limits again: the restarted (empty) Redis counts from zero, so a burst passes and
    # then the policy throttles.
    after = [await bad_login(http, stack, unique_email("y")) for _ in range(LOGIN_BURST + 2)]
    assert 429 in after
