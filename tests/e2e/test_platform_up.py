"""Every process of the platform answers its health, readiness and metrics endpoints."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.stack import Stack


@pytest.mark.parametrize("name", ["gateway", "users", "orgs", "files"])
async def test_health_ready_and_metrics(stack: Stack, name: str) -> None:
    base = stack.processes[name].url
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, (name, path, await resp.text())
        async with http.get(base + "/metrics") as resp:
            assert "http_requests_total" in await resp.text()
