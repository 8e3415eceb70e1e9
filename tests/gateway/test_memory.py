"""A 200 MiB upload moves through a real gateway process with flat memory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.common.embedded import free_port, wait_for_port
from tests.conftest import TEST_SECRET
from tests.gateway.conftest import Upstream

MiB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
def gateway_process(
    users: Upstream, orgs: Upstream, files: Upstream, routes_file: Path, redis_prefix: str,
    redis_url: str,
) -> Iterator[tuple[str, int]]:  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "PORTICO_GATEWAY_PORT": str(port), "PORTICO_GATEWAY_WORKERS": "1",
        "PORTICO_GATEWAY_USERS_URLS": users.url, "PORTICO_GATEWAY_ORGS_URLS": orgs.url,
        "PORTICO_GATEWAY_FILES_URLS": files.url, "PORTICO_GATEWAY_ROUTES_FILE": str(routes_file),
        "PORTICO_GATEWAY_REDIS_PREFIX": redis_prefix, "REDIS_URL": redis_url,
        "PORTICO_INTERNAL_SECRET": TEST_SECRET, "PORTICO_ENV": "test",
        "PORTICO_GATEWAY_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env,
                               stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for_port("127.0.0.1", port, 20), "gateway did not start"
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(15)


async def test_200_mib_upload_keeps_gateway_memory_flat(
    gateway_process: tuple[str, int], files: Upstream
) -> None:
    url, pid = gateway_process
    chunk = os.urandom(MiB)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield chunk

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/public") as warm:
            assert warm.status == 200
        before = memory_kib(pid, "VmRSS")
        async with session.post(f"{url}/api/v1/upload", data=body()) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
    peak = memory_kib(pid, "VmHWM")
    assert answer["received"] == 200 * MiB
    assert files.recorder.upload_bytes == 200 * MiB
    assert (peak - before) < 50 * 1024, f"gateway RSS grew by {(peak - before) // 1024} MiB"
