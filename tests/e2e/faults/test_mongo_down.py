"""The MongoDB-wire server killed (SIGKILL) under a stream of writes and restarted: clean 503s
and readiness false during, and no half-written record after."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from tests.e2e.faults.conftest import (
    PROBLEM,
    assert_clean_failure,
    register,
    running_stack,
    signed_in,
    unique_email,
)
from tests.e2e.stack import Stack, eventually


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path,
        durable_mongo=True,
        # The sweeper runs every second and treats uploads older than 2 s as abandoned.
        extra_env={
            "PORTICO_FILES_SWEEP_INTERVAL_SECONDS": "1",
            "PORTICO_FILES_STALE_UPLOAD_SECONDS": "2",
        },
    ) as running:
        yield running


async def ready(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(f"{url}/readyz") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def upload(http: aiohttp.ClientSession, stack: Stack, auth: dict[str, str], n: int) -> Any:
    async with http.post(
        f"{stack.gateway}/api/v1/files?name=n{n}.txt",
        headers={**auth, "Content-Type": "text/plain"},
        data=b"hello %d\n" % n * 2000,
    ) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def test_database_killed_mid_writes_gives_503_and_leaves_nothing_half_written(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    assert stack.mongo is not None
    _, auth = await signed_in(http, stack)
    outcomes: list[tuple[str, int, str, Any]] = []
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            email = unique_email("db")
            status, body = await register(http, stack, email)
            outcomes.append(("register", status, email, body))
            with contextlib.suppress(aiohttp.ClientError):
                status, content_type, body = await upload(http, stack, auth, n)
                outcomes.append(("upload", status, content_type, body))

    writers = [asyncio.create_task(writer()) for _ in range(3)]
    try:
        await _outage(stack, http, auth)
    finally:
        stop.set()
        done = await asyncio.gather(*writers, return_exceptions=True)
    assert all(result is None for result in done), done
    await _check_nothing_half_written(stack, http, auth, outcomes)


async def _outage(stack: Stack, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    assert stack.mongo is not None
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stack.mongo.stop, kill=True)
    try:
        # During: readiness false and clean 503s for what needs the database.
        for name in ("users", "orgs", "files"):
            assert await eventually(lambda n=name: _down(http, stack, n), timeout=15)
        async with http.post(f"{stack.gateway}/api/v1/orgs", headers=auth,
                             json={"name": "O", "slug": unique_email("o")[:20].replace("@", "")}
                             ) as resp:  # fmt: skip
            body = await resp.json(content_type=None)
            assert_clean_failure(resp.status, resp.content_type, body, {503})
            assert body["code"] == "UPSTREAM_UNAVAILABLE"
        await asyncio.sleep(1.0)
    finally:
        await asyncio.to_thread(stack.mongo.start)
    for name in ("users", "orgs", "files"):
        assert await eventually(lambda n=name: _up(http, stack, n), timeout=30)
    await asyncio.sleep(1.0)


async def _check_nothing_half_written(
    stack: Stack,
    http: aiohttp.ClientSession,
    auth: dict[str, str],
    outcomes: list[tuple[str, int, str, Any]],
) -> None:
    assert stack.mongo is not None
    # Every answer was a success or a clean 503 (5xx internals never reach the client).
    failures = [o for o in outcomes if o[1] >= 400]
    assert failures, "the outage was never observed by the writers"
    for kind, status, _, body in failures:
        assert status in (503, 504), (kind, status, body)
        assert isinstance(body, dict)
        assert body["code"] in ("UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT"), body
    assert any(o[0] == "register" and o[1] == 201 for o in outcomes)

    async with AsyncMongoClient(stack.mongo.url) as client:
        users, files = client["portico_users"], client["portico_files"]
        # Every user has its user.created event, and every acknowledged registration is stored.
        user_ids = {str(doc["_id"]) async for doc in users["users"].find({}, {"_id": 1})}
        created = {
            str(e["data"]["user_id"]) async for e in users["outbox"].find({"type": "user.created"})
        }
        assert user_ids == created
        acknowledged = {body["id"] for kind, status, _, body in outcomes
                        if kind == "register" and status == 201}  # fmt: skip
        assert acknowledged <= user_ids

        # After the sweeper, no upload is left half done, and every stored file can be read.
        async def no_uploading() -> bool:
            return await files["files"].count_documents({"status": "uploading"}) == 0

        assert await eventually(no_uploading, timeout=20)
        ready_ids = [str(doc["_id"]) async for doc in files["files"].find({"status": "ready"})]
        uploaded = {body["id"] for kind, status, _, body in outcomes
                    if kind == "upload" and status == 201}  # fmt: skip
        assert uploaded <= set(ready_ids)
    for file_id in ready_ids:
        async with http.get(f"{stack.gateway}/api/v1/files/{file_id}/content", headers=auth) as r:
            assert r.status == 200, (file_id, await r.text())
            assert (await r.read()).startswith(b"hello ")
    # And writes work again.
    status, _ = await register(http, stack, unique_email("after"))
    assert status == 201


async def _down(http: aiohttp.ClientSession, stack: Stack, name: str) -> bool:
    async with http.get(f"{stack.processes[name].url}/readyz") as resp:
        return resp.status == 503 and resp.content_type in (PROBLEM, "application/json")


async def _up(http: aiohttp.ClientSession, stack: Stack, name: str) -> bool:
    async with http.get(f"{stack.processes[name].url}/readyz") as resp:
        return resp.status == 200
