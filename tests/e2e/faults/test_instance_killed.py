"""One of two instances of a service SIGKILLed under load: idempotent GETs fail over (the client
sees 200), POSTs are never replayed (at most one effect each), and a failed request is a clean
problem+json."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.faults.conftest import assert_clean_failure, running_stack, signed_in
from tests.e2e.stack import Stack, eventually

VICTIM = "users-2"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, instances={"users": 2}) as running:
        yield running


async def test_killed_instance_fails_over_gets_and_never_replays_posts(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, auth = await signed_in(http, stack)
    keys_url = f"{stack.gateway}/api/v1/api-keys"
    run = uuid.uuid4().hex[:8]
    gets: list[tuple[int, str, Any]] = []
    posts: dict[str, tuple[int, str, Any]] = {}
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            async with http.get(keys_url, headers=auth) as resp:
                gets.append((resp.status, resp.content_type, await resp.json(content_type=None)))

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = f"k-{run}-{w}-{n}"
            async with http.post(keys_url, headers=auth, json={"name": name}) as resp:
                posts[name] = (resp.status, resp.content_type, await resp.json(content_type=None))

    tasks = [asyncio.create_task(reader()) for _ in range(4)]
    tasks += [asyncio.create_task(writer(w)) for w in range(3)]
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.processes[VICTIM].kill)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(result is None for result in done), done

    # Reads never noticed: every GET was answered 200 (failed over to the surviving instance).
    assert len(gets) > 20
    assert [g for g in gets if g[0] != 200] == []
    # Writes either succeeded or failed cleanly, with no internals.
    failed = {name: p for name, p in posts.items() if p[0] != 201}
    for status, content_type, body in failed.values():
        assert_clean_failure(status, content_type, body, {502, 503, 504})
    # No POST was replayed: every key name exists at most once, and every 201 exactly once.
    async with http.get(keys_url, headers=auth, params={"limit": "100"}) as resp:
        assert resp.status == 200
        stored = [item["name"] for item in (await resp.json())["items"]]
    mine = [name for name in stored if name.startswith(f"k-{run}-")]
    assert len(mine) == len(set(mine))
    assert {name for name, p in posts.items() if p[0] == 201} <= set(mine)

    # Heal: the instance comes back and takes traffic again.
    victim = stack.processes[VICTIM]
    before = victim.log.read_text(errors="replace").count("/api/v1/api-keys")
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(victim.wait_ready)

    async def serves_again() -> bool:
        for _ in range(10):
            async with http.get(keys_url, headers=auth) as resp:
                assert resp.status == 200
        return victim.log.read_text(errors="replace").count("/api/v1/api-keys") > before

    assert await eventually(serves_again, timeout=30)
