"""The admin listener: cache purges by tag or key, token-protected, never on the public port."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.admin import ADMIN_PORT
from tests.gateway.conftest import MakeGateway, Upstream, assert_problem

TOKEN = "test-admin-token-0123456789"
pytestmark = pytest.mark.usefixtures("orgs")


async def admin_gateway(make_gateway: MakeGateway) -> tuple[Any, str]:
    gateway = await make_gateway(
        cache_enabled=True, admin_token=TOKEN, admin_port=0, admin_host="127.0.0.1"
    )
    return gateway, f"http://127.0.0.1:{gateway.server.app[ADMIN_PORT]}/admin/cache/purge"


async def cache_status(gateway: Any) -> str:
    response = await gateway.get("/api/v1/cached")
    assert response.status == 200
    return str(response.headers["X-Cache-Status"])


async def test_purge_by_tag_makes_the_next_read_a_miss(
    make_gateway: MakeGateway, orgs: Upstream
) -> None:
    gateway, purge_url = await admin_gateway(make_gateway)
    assert [await cache_status(gateway), await cache_status(gateway)] == ["MISS", "HIT"]
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(purge_url, json={"tags": ["user:1"]}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    assert body["tags"] == 1
    assert body["purged_entries"] >= 1
    assert await cache_status(gateway) == "MISS"
    assert orgs.recorder.paths() == ["/api/v1/cached", "/api/v1/cached"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"tags": ["user:1"]}, 401, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer wrong-token"}, {"tags": ["user:1"]}, 403, "FORBIDDEN"),
        ({"Authorization": f"Basic {TOKEN}"}, {"tags": ["user:1"]}, 401, "UNAUTHENTICATED"),
        ({"Authorization": f"Bearer {TOKEN}"}, {}, 422, "VALIDATION_FAILED"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"tags": ["a b"]}, 422, "VALIDATION_FAILED"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"tags": {"$gt": ""}}, 422, "VALIDATION_FAILED"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"tags": ["x"] * 1001}, 422, "VALIDATION_FAILED"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"tags": ["x"], "all": True}, 422,
         "VALIDATION_FAILED"),
    ],
    ids=["no-token", "wrong-token", "wrong-scheme", "empty", "space", "operator", "too-many",
         "unknown-field"],
)  # fmt: skip
async def test_refused_purges_purge_nothing(
    make_gateway: MakeGateway, headers: dict[str, str], body: Any, status: int, code: str
) -> None:
    gateway, purge_url = await admin_gateway(make_gateway)
    await cache_status(gateway)
    async with (
        aiohttp.ClientSession() as http,
        http.post(purge_url, json=body, headers=headers) as resp,
    ):
        problem = await resp.json(content_type=None)
        assert resp.status == status, problem
        assert resp.content_type == "application/problem+json"
        assert problem["code"] == code
        assert TOKEN not in await resp.text()
    assert await cache_status(gateway) == "HIT"


async def test_no_token_no_listener_and_the_public_port_has_no_admin_route(
    make_gateway: MakeGateway,
) -> None:
    gateway = await make_gateway(cache_enabled=True)
    assert ADMIN_PORT not in gateway.server.app
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await gateway.post("/admin/cache/purge", json={"tags": ["user:1"]}, headers=headers)
    await assert_problem(response, 404, "NOT_FOUND")
