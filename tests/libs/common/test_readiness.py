"""`/readyz` reflects the real dependencies: it turns 503 when Redis or MongoDB stops."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from libs.common.app import create_service_app
from libs.common.embedded import EmbeddedMongo, free_port, wait_for_port
from libs.common.mongo import mongo_ctx
from libs.common.redis import redis_ctx
from libs.common.settings import BaseServiceSettings


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    assert wait_for_port("127.0.0.1", port, 10)
    yield port, proc
    proc.kill()
    proc.wait()


def app_with(*ctxs: Any) -> web.Application:
    app = create_service_app(BaseServiceSettings(service_name="readiness-test"))
    app.cleanup_ctx.extend(ctxs)
    return app


async def test_readyz_turns_503_when_redis_stops(
    aiohttp_client: Any, own_redis: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, proc = own_redis
    client = await aiohttp_client(app_with(redis_ctx(f"redis://127.0.0.1:{port}/0")))
    assert (await client.get("/readyz")).status == 200
    proc.kill()
    proc.wait()
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert body["code"] == "UPSTREAM_UNAVAILABLE"
    assert body["checks"] == {"redis": "down"}
    assert str(port) not in await resp.text()  # no internal addresses leak
    assert (await client.get("/healthz")).status == 200  # alive, just not ready


async def test_readyz_turns_503_when_mongodb_stops_and_recovers(aiohttp_client: Any) -> None:
    server = EmbeddedMongo().start()
    try:
        client = await aiohttp_client(app_with(mongo_ctx(server.url, "readiness", [])))
        assert (await client.get("/readyz")).status == 200
        server.stop(kill=True)
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"] == {"mongodb": "down"}
        server.start()  # same port: the driver reconnects by itself
        deadline = time.monotonic() + 20
        status = 503
        while time.monotonic() < deadline and status != 200:
            status = (await client.get("/readyz")).status
        assert status == 200
    finally:
        server.stop()
