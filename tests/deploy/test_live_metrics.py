"""Every metric family the Grafana dashboards and Prometheus rules query is really exported, with
samples, by a running process of the platform after ordinary traffic (issue 10).

The check scrapes `/metrics` of every process of a real stack (gateway, users, orgs, files) after
a login, a cached GET read twice, an org creation (so events are published and consumed) and a
burst of anonymous requests past the per-IP limit (a 429).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import ModuleType

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import stack  # noqa: F401  (the whole platform, as processes)
from tests.e2e.stack import Stack

PASSWORD = "a long enough passphrase 42"
# The anonymous burst comes from its own loopback address: its 429s spend no other test's budget.
BURST_SOURCE_IP = "127.0.0.3"


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    """Family name -> number of samples exported by the process at `url`."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {family.name: len(family.samples) for family in text_string_to_metric_families(text)}


def _family(name: str, kinds: dict[str, str]) -> str:
    """The exposition-format family name (the parser drops a counter's `_total`)."""
    return name.removesuffix("_total") if kinds.get(name) == "counter" else name


async def _drive_traffic(http: aiohttp.ClientSession, gateway: str) -> None:
    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    async with http.post(
        f"{gateway}/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "Metrics"},
    ) as r:
        assert r.status == 201, await r.text()
    async with http.post(
        f"{gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    ) as r:
        assert r.status == 200, await r.text()
        auth = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
    async with http.get(f"{gateway}/api/v1/auth/sessions", headers={"Authorization": "Bearer x"}):
        pass  # an auth failure
    statuses = []
    for _ in range(2):
        async with http.get(f"{gateway}/api/v1/users/me", headers=auth) as r:
            statuses.append(r.headers.get("X-Cache-Status"))
    assert statuses[-1] == "HIT", statuses
    slug = f"metrics-{uuid.uuid4().hex[:8]}"
    async with http.post(
        f"{gateway}/api/v1/orgs", headers=auth, json={"name": "Metrics", "slug": slug}
    ) as r:
        assert r.status == 201, await r.text()
    connector = aiohttp.TCPConnector(local_addr=(BURST_SOURCE_IP, 0))
    async with aiohttp.ClientSession(connector=connector) as anonymous:
        limited = False
        for _ in range(60):
            async with anonymous.get(f"{gateway}/.well-known/jwks.json") as r:
                if r.status == 429:
                    limited = True
                    break
        assert limited, "the anonymous per-IP limit never answered 429"


async def test_every_metric_dashboards_and_rules_query_is_exported_by_a_running_process(
    stack: Stack,  # noqa: F811
    check_deploy: ModuleType,
) -> None:
    declared = yaml.safe_load((check_deploy.DEPLOY / "metrics.yaml").read_text())["metrics"]
    kinds = {m["name"]: m["type"] for m in declared}
    referenced = {
        family
        for names in check_deploy.referenced_metrics().values()
        for families in names.values()
        for family in families
    }
    assert {"http_requests_total", "gateway_cache_requests_total", "outbox_pending"} <= referenced

    async with aiohttp.ClientSession() as http:
        await _drive_traffic(http, stack.gateway)
        # Events are relayed and consumed asynchronously: scrape until everything shows up.
        deadline = time.monotonic() + 30
        while True:
            scraped = {
                name: await _scrape(http, process.url) for name, process in stack.processes.items()
            }
            missing = sorted(
                name
                for name in referenced
                if not any(samples.get(_family(name, kinds)) for samples in scraped.values())
            )
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert not missing, f"queried by deploy/ but exported by no running process: {missing}"
    # Each family is also declared (with its type) by every process metrics.yaml says exports it.
    undeclared = sorted(
        f"{m['name']}@{process}"
        for m in declared
        if m["name"] in referenced
        for process in m["processes"]
        if _family(m["name"], kinds) not in scraped[process]
    )
    assert not undeclared, f"deploy/metrics.yaml names processes that do not export: {undeclared}"
