"""Fixtures shared by the whole suite: real MongoDB-wire (SecantusDB), Redis and RabbitMQ.

Each xdist worker starts its own SecantusDB; every test gets a unique database name and a unique
Redis key prefix, so tests run in parallel without seeing each other.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from libs.common.embedded import EmbeddedMongo
from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity

TEST_SECRET = "portico-test-internal-secret-0123456789abcdef"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or default_port), timeout=2).close()
    except OSError:
        return False
    return True


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [
        name
        for name, url, port in (("Redis", REDIS_URL, 6379), ("RabbitMQ", RABBITMQ_URL, 5672))
        if not _reachable(url, port)
    ]
    if missing:
        pytest.exit(f"not reachable: {', '.join(missing)} (see scripts/check_infra.py)", 3)


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[EmbeddedMongo]:
    with EmbeddedMongo() as server:
        yield server


@pytest.fixture(scope="session")
def mongo_url(mongo_server: EmbeddedMongo) -> str:
    return mongo_server.url


@pytest.fixture
def unique() -> str:
    """A short unique token for names (databases, queues, prefixes)."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def db_name(unique: str) -> str:
    return f"test_{unique}"


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def rabbitmq_url() -> str:
    return RABBITMQ_URL


@pytest.fixture
async def redis_prefix(unique: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test:{unique}:"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def internal_secret() -> str:
    return TEST_SECRET


def identity_headers(
    user_id: str, *, roles: tuple[str, ...] = ("user",), secret: str = TEST_SECRET, **extra: object
) -> dict[str, str]:
    """The headers the gateway would forward for a signed-in user."""
    principal = Principal(id=user_id, roles=roles, **extra)  # type: ignore[arg-type]
    return {IDENTITY_HEADER: sign_identity(principal, secret)}
