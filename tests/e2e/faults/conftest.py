"""Fault-injection helpers: a fresh stack per test (faults never reach the shared e2e stack),
clients, and polling."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.settings import DEFAULT_ROUTES_FILE
from tests.e2e.stack import Stack

PASSWORD = "a long enough passphrase 42"
PROBLEM = "application/problem+json"


# Fault tests send bursts from one IP; the anonymous default (20 burst) would turn them into 429s.
LOOSE_LIMITS = {
    "anonymous": {"rate": 1000, "burst": 1000},
    "user": {"rate": 1000, "burst": 1000, "key": "principal"},
    "login": {"rate": 1000, "per": 60, "burst": 1000},
}


def routes_file(
    directory: Path, policies: dict[str, dict[str, Any]], timeout: float | None = None
) -> Path:
    """The real route table with these rate-limit policies (and default route timeout)."""
    table = yaml.safe_load(DEFAULT_ROUTES_FILE.read_text())
    if timeout is not None:
        table["defaults"]["timeout"] = timeout
    table["rate_limits"] = {**table.get("rate_limits", {}), "policies": policies}
    path = directory / "routes.yaml"
    path.write_text(yaml.safe_dump(table))
    return path


@contextmanager
def running_stack(
    directory: Path,
    *,
    policies: dict[str, dict[str, Any]] | None = None,
    timeout: float | None = None,
    **options: Any,
) -> Iterator[Stack]:
    """A whole platform of its own for one test, stopped (and its vhost deleted) afterwards."""
    extra_env = dict(options.pop("extra_env", None) or {})
    extra_env["PORTICO_GATEWAY_ROUTES_FILE"] = str(
        routes_file(directory, policies or LOOSE_LIMITS, timeout)
    )
    stack = Stack(directory, **options)
    try:
        stack.start(extra_env)
        yield stack
    finally:
        # Nothing to drain in a throwaway stack: SIGKILL is faster than a graceful stop.
        for process in stack.processes.values():
            process.kill()
        if stack.mongo is not None:
            stack.mongo.stop(kill=True)
        stack.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def print_stack_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed fault test shows what the processes logged above info level (in CI, nothing
    else is left to read once the temporary directory is gone)."""
    yield
    if not request.node.stash.get(_CALL_FAILED, False):
        return
    stack = request.node.funcargs.get("stack")
    if not isinstance(stack, Stack):
        return
    for process in stack.processes.values():
        lines = process.log.read_text(errors="replace").splitlines() if process.log.exists() else []
        notable = [line for line in lines if '"level":"info"' not in line and line.strip()]
        sys.stdout.write(f"--- {process.name}: {len(notable)} notable log lines (last 40) ---\n")
        sys.stdout.write("\n".join(notable[-40:]) + "\n")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def unique_email(name: str = "f") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


async def register(http: aiohttp.ClientSession, stack: Stack, email: str) -> tuple[int, Any]:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "F"},
    ) as resp:
        return resp.status, await _body(resp)


async def login(http: aiohttp.ClientSession, stack: Stack, email: str) -> dict[str, str]:
    async with http.post(
        f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def signed_in(http: aiohttp.ClientSession, stack: Stack) -> tuple[str, dict[str, str]]:
    email = unique_email()
    status, body = await register(http, stack, email)
    assert status == 201, body
    return body["id"], await login(http, stack, email)


async def _body(resp: aiohttp.ClientResponse) -> Any:
    if resp.content_type in ("application/json", PROBLEM):
        return await resp.json(content_type=None)
    return await resp.text()


def assert_clean_failure(status: int, content_type: str, body: Any, allowed: set[int]) -> None:
    """A failed request is a problem+json with a status the client can act on; no internals."""
    assert status in allowed, (status, body)
    assert content_type == PROBLEM, (status, content_type, body)
    assert isinstance(body, dict), body
    assert {"type", "title", "status", "code"} <= body.keys(), body
    assert body["status"] == status
    assert "Traceback" not in str(body)
    assert "mongo" not in str(body).lower()
