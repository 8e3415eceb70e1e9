"""The attack suite's own platform and hostile-client helpers.

The stack here trusts `X-Forwarded-For` only from 127.0.0.2 (our "proxy") and lists one CORS
origin plus `*` (with credentials on: the wildcard must never be honoured). Every client binds a
fresh loopback source address (127.x.y.z), so per-IP limits (anonymous, `login`) are per test and
an attack never spends another test's budget.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack import Stack

PASSWORD = "a long enough passphrase 42"
PROXY_IP = "127.0.0.2"
APP_ORIGIN = "https://app.example.test"
_addresses = itertools.count(1)

# Words that betray internals: tracebacks, driver messages, library names.
LEAKS = (
    "Traceback",
    'File "',
    "pymongo",
    "beanie",
    "bson",
    "OperationFailure",
    "redis.",
    "aiohttp.",
    "aio_pika",
    "Exception",
    "secantus",
    "127.0.0.1:",
    "localhost:",
)
PROBLEM_KEYS = {"type", "title", "status", "code", "request_id"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("attack-stack"))
    try:
        running.start(
            extra_env={
                "PORTICO_GATEWAY_TRUSTED_PROXIES": PROXY_IP,
                "PORTICO_GATEWAY_CORS_ORIGINS": f"{APP_ORIGIN},*",
                "PORTICO_GATEWAY_CORS_ALLOW_CREDENTIALS": "true",
            }
        )
        yield running
    finally:
        running.stop()


def fresh_ip() -> str:
    """A loopback address no other client of this worker uses (127.<pid>.<n>.<n>)."""
    n = next(_addresses)
    return f"127.{os.getpid() % 200 + 10}.{n // 250 % 250 + 1}.{n % 250 + 1}"


def client(ip: str | None = None) -> aiohttp.ClientSession:
    """A client session connecting from its own loopback address."""
    connector = aiohttp.TCPConnector(local_addr=(ip or fresh_ip(), 0), force_close=True)
    return aiohttp.ClientSession(connector=connector)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with client() as session:
        yield session


@dataclass
class User:
    id: str
    email: str
    auth: dict[str, str]
    access_token: str
    refresh_token: str


async def new_user(stack: Stack, name: str = "Mallory") -> User:
    """Register and log in from a fresh address (spends no other test's login budget)."""
    email = f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com"
    async with client() as http:
        async with http.post(
            f"{stack.gateway}/api/v1/auth/register",
            json={"email": email, "password": PASSWORD, "display_name": name},
        ) as resp:
            assert resp.status == 201, await resp.text()
            user = await resp.json()
        async with http.post(
            f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            tokens = await resp.json()
    access = tokens["access_token"]
    return User(
        user["id"], email, {"Authorization": f"Bearer {access}"}, access, tokens["refresh_token"]
    )


def internals(stack: Stack) -> list[str]:
    """Host:port strings of the stack's processes (must never reach a client)."""
    found = [f"127.0.0.1:{p.port}" for p in stack.processes.values()]
    if stack.mongo is not None:
        found.append(stack.mongo.url.split("//", 1)[-1].split("/", 1)[0])
    return found


async def assert_problem(
    resp: aiohttp.ClientResponse,
    status: int | tuple[int, ...],
    code: str | tuple[str, ...] | None = None,
    *,
    stack: Stack | None = None,
) -> dict[str, Any]:
    """The response is a contract problem+json with that status (and code), leaking nothing."""
    statuses = (status,) if isinstance(status, int) else status
    text = await resp.text()
    assert resp.status in statuses, f"{resp.status}: {text[:500]}"
    assert resp.content_type == "application/problem+json", (resp.content_type, text[:300])
    body = json.loads(text)
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == resp.status
    assert body["code"].isupper()
    if code is not None:
        codes = (code,) if isinstance(code, str) else code
        assert body["code"] in codes, body
    for word in LEAKS:
        assert word not in text, (word, text[:500])
    if stack is not None:
        for address in internals(stack):
            assert address not in text, (address, text[:500])
    return body  # type: ignore[no-any-return]
