"""Fixtures of the users service tests: the real app on SecantusDB + Redis, and a small client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient

from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity
from services.users.app import create_app
from services.users.settings import Settings
from tests.conftest import REDIS_URL, TEST_SECRET

PASSWORD = "correct horse battery staple"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_settings(mongo_url: str, db_name: str, redis_prefix: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "mongodb_url": mongo_url,
            "mongodb_database": db_name,
            "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix,
            "internal_secret": TEST_SECRET,
            # Cheap argon2 for speed; test_passwords checks the production defaults.
            "argon2_time_cost": 1,
            "argon2_memory_kib": 64,
            "argon2_parallelism": 1,
            "log_json": False,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def db(mongo_url: str, db_name: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, tz_aware=True)
    yield client[db_name]
    await client.drop_database(db_name)
    await client.close()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


class Users:
    """The users API as a test sees it through the gateway (identity forwarded, signed)."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, **kwargs)

    async def register(
        self, email: str | None = None, password: str = PASSWORD, display_name: str = "Ada Lovelace"
    ) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        resp = await self.client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": display_name},
        )
        assert resp.status == 201, await resp.text()
        user: dict[str, Any] = await resp.json()
        return user

    async def login(self, email: str, password: str = PASSWORD, **headers: str) -> dict[str, Any]:
        resp = await self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}, headers=headers
        )
        assert resp.status == 200, await resp.text()
        tokens: dict[str, Any] = await resp.json()
        return tokens

    async def signup(
        self, email: str | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        user = await self.register(email, **kwargs)
        return user, await self.login(user["email"], kwargs.get("password", PASSWORD))


def identity_for(access_token: str, *, secret: str = TEST_SECRET) -> dict[str, str]:
    """What the gateway forwards for this access token (it verified it; we only decode)."""
    claims = jwt.decode(access_token, options={"verify_signature": False})
    principal = Principal(
        id=claims["sub"],
        kind="user",
        roles=tuple(claims["roles"]),
        session_id=claims["sid"],
        token_id=claims["jti"],
        token_exp=claims["exp"],
    )
    return {IDENTITY_HEADER: sign_identity(principal, secret)}


def service_identity(secret: str = TEST_SECRET) -> dict[str, str]:
    principal = Principal(id="gateway", kind="service", roles=("service",))
    return {IDENTITY_HEADER: sign_identity(principal, secret)}


def user_identity(
    user_id: str, *, roles: tuple[str, ...] = ("user",), kind: str = "user", **extra: Any
) -> dict[str, str]:
    principal = Principal(id=user_id, kind=kind, roles=roles, **extra)  # type: ignore[arg-type]
    return {IDENTITY_HEADER: sign_identity(principal, TEST_SECRET)}


@pytest.fixture
def make_client(aiohttp_client: Any, db: Any) -> ClientFactory:
    async def make(settings: Settings) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
        return client

    return make


@pytest.fixture
async def users(make_client: ClientFactory, settings: Settings) -> Users:
    return Users(await make_client(settings))


async def outbox_events(db: Any, type_: str | None = None) -> list[dict[str, Any]]:
    query = {"type": type_} if type_ else {}
    return [doc async for doc in db["outbox"].find(query).sort("_id")]
