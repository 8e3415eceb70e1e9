"""IDOR: another user's (or another org's) ids on every resource path answer 404, change nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.attacks.conftest import User, assert_problem, client, new_user
from tests.e2e.stack import Stack


@dataclass
class Estate:
    """Everything Alice owns."""

    alice: User
    file: dict[str, Any]
    org: dict[str, Any]
    team: dict[str, Any]
    invitation: dict[str, Any]
    key: dict[str, Any]
    session_id: str


async def call(
    http: aiohttp.ClientSession, method: str, url: str, auth: dict[str, str], **kwargs: Any
) -> tuple[int, Any]:
    headers = {**auth, **kwargs.pop("headers", {})}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        if resp.content_type.endswith("json"):
            return resp.status, await resp.json(content_type=None)
        return resp.status, await resp.read()


async def created(http: aiohttp.ClientSession, url: str, auth: dict[str, str], **kw: Any) -> Any:
    status, body = await call(http, "POST", url, auth, **kw)
    assert status == 201, body
    return body


async def build_estate(http: aiohttp.ClientSession, stack: Stack, name: str) -> Estate:
    gw = stack.gateway
    alice = await new_user(stack, name)
    org = await created(
        http,
        f"{gw}/api/v1/orgs",
        alice.auth,
        json={"name": f"{name} Inc", "slug": f"o-{uuid.uuid4().hex[:10]}"},
    )
    team = await created(
        http, f"{gw}/api/v1/orgs/{org['id']}/teams", alice.auth, json={"name": "core"}
    )
    invitation = await created(
        http,
        f"{gw}/api/v1/orgs/{org['id']}/invitations",
        alice.auth,
        json={"email": f"guest-{uuid.uuid4().hex[:8]}@example.com", "role": "member"},
    )
    file = await created(
        http,
        f"{gw}/api/v1/files?name=private.txt",
        alice.auth,
        data=b"alice's private bytes\n",
        headers={"Content-Type": "text/plain"},
    )
    key = await created(
        http, f"{gw}/api/v1/api-keys", alice.auth, json={"name": "ci", "scopes": ["users:read"]}
    )
    status, sessions = await call(http, "GET", f"{gw}/api/v1/auth/sessions", alice.auth)
    assert status == 200
    return Estate(alice, file, org, team, invitation, key, sessions["items"][0]["id"])


@pytest.fixture
async def http() -> Any:
    async with client() as session:
        yield session


def attacks(e: Estate, own_org: str, own_team: str) -> list[tuple[str, str, dict[str, Any]]]:
    f, o, t, i = e.file["id"], e.org["id"], e.team["id"], e.invitation["id"]
    a = e.alice.id
    return [
        ("GET", f"/api/v1/files/{f}", {}),
        ("GET", f"/api/v1/files/{f}/content", {}),
        ("GET", f"/api/v1/files/{f}/content", {"headers": {"Range": "bytes=0-3"}}),
        ("POST", f"/api/v1/files/{f}/url", {"json": {}}),
        ("DELETE", f"/api/v1/files/{f}", {}),
        ("GET", f"/api/v1/orgs/{o}", {}),
        ("PATCH", f"/api/v1/orgs/{o}", {"json": {"name": "pwned"}}),
        ("DELETE", f"/api/v1/orgs/{o}", {}),
        ("GET", f"/api/v1/orgs/{o}/members", {}),
        ("PATCH", f"/api/v1/orgs/{o}/members/{a}", {"json": {"role": "member"}}),
        ("DELETE", f"/api/v1/orgs/{o}/members/{a}", {}),
        ("GET", f"/api/v1/orgs/{o}/invitations", {}),
        (
            "POST",
            f"/api/v1/orgs/{o}/invitations",
            {"json": {"email": "me@example.com", "role": "owner"}},
        ),
        ("DELETE", f"/api/v1/orgs/{o}/invitations/{i}", {}),
        ("GET", f"/api/v1/orgs/{o}/teams", {}),
        ("POST", f"/api/v1/orgs/{o}/teams", {"json": {"name": "mine"}}),
        ("GET", f"/api/v1/orgs/{o}/teams/{t}", {}),
        ("PATCH", f"/api/v1/orgs/{o}/teams/{t}", {"json": {"name": "pwned"}}),
        ("DELETE", f"/api/v1/orgs/{o}/teams/{t}", {}),
        ("PUT", f"/api/v1/orgs/{o}/teams/{t}/members/{a}", {}),
        ("DELETE", f"/api/v1/orgs/{o}/teams/{t}/members/{a}", {}),
        # Alice's ids under Mallory's own org (cross-org confusion).
        ("GET", f"/api/v1/orgs/{own_org}/teams/{t}", {}),
        ("PATCH", f"/api/v1/orgs/{own_org}/teams/{t}", {"json": {"name": "pwned"}}),
        ("DELETE", f"/api/v1/orgs/{own_org}/teams/{t}", {}),
        ("DELETE", f"/api/v1/orgs/{own_org}/invitations/{i}", {}),
        ("PATCH", f"/api/v1/orgs/{own_org}/members/{a}", {"json": {"role": "admin"}}),
        ("DELETE", f"/api/v1/orgs/{own_org}/members/{a}", {}),
        ("PUT", f"/api/v1/orgs/{own_org}/teams/{own_team}/members/{a}", {}),
        ("DELETE", f"/api/v1/api-keys/{e.key['id']}", {}),
        ("DELETE", f"/api/v1/auth/sessions/{e.session_id}", {}),
    ]


async def snapshot(http: aiohttp.ClientSession, stack: Stack, e: Estate) -> dict[str, Any]:
    """What Alice sees of her things (fresh, bypassing the cache)."""
    gw, auth = stack.gateway, {**e.alice.auth, "Cache-Control": "no-cache"}
    o = e.org["id"]
    state: dict[str, Any] = {}
    for name, path in (
        ("file", f"/api/v1/files/{e.file['id']}"),
        ("org", f"/api/v1/orgs/{o}"),
        ("members", f"/api/v1/orgs/{o}/members"),
        ("teams", f"/api/v1/orgs/{o}/teams"),
        ("invitations", f"/api/v1/orgs/{o}/invitations"),
        ("team", f"/api/v1/orgs/{o}/teams/{e.team['id']}"),
        ("keys", "/api/v1/api-keys"),
        ("sessions", "/api/v1/auth/sessions"),
        ("content", f"/api/v1/files/{e.file['id']}/content"),
    ):
        status, body = await call(http, "GET", f"{gw}{path}", auth)
        assert status == 200, (name, body)
        if name == "sessions":
            body = sorted(s["id"] for s in body["items"])
        if name == "keys":  # last use moves with Alice's own key check below
            body = [{k: v for k, v in key.items() if k != "last_used_at"} for key in body["items"]]
        state[name] = body
    async with http.get(f"{gw}/api/v1/users/me", headers={"X-API-Key": e.key["key"]}) as r:
        state["key_works"] = r.status == 200
    return state


async def test_another_users_ids_are_404_on_every_path_and_nothing_changes(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    gw = stack.gateway
    estate = await build_estate(http, stack, "Alice")
    mallory = await new_user(stack, "Mallory")
    own_org = await created(
        http,
        f"{gw}/api/v1/orgs",
        mallory.auth,
        json={"name": "M", "slug": f"m-{uuid.uuid4().hex[:10]}"},
    )
    own_team = await created(
        http, f"{gw}/api/v1/orgs/{own_org['id']}/teams", mallory.auth, json={"name": "m"}
    )
    before = await snapshot(http, stack, estate)  # also warms the gateway cache with Alice's data
    for method, path, kwargs in attacks(estate, own_org["id"], own_team["id"]):
        headers = {**mallory.auth, **kwargs.pop("headers", {})}
        async with http.request(method, f"{gw}{path}", headers=headers, **kwargs) as resp:
            body = await assert_problem(resp, (404, 422) if method == "PUT" else 404, stack=stack)
            assert estate.file["name"] not in str(body)
            assert estate.alice.email not in str(body)
    # Listing with Alice's org id: refused, or only Mallory's own files.
    async with http.get(f"{gw}/api/v1/files?org_id={estate.org['id']}", headers=mallory.auth) as r:
        if r.status == 200:
            assert (await r.json())["items"] == []
        else:
            await assert_problem(r, (403, 404), stack=stack)
    # Accepting someone else's invitation (email mismatch) does not join.
    async with http.post(
        f"{gw}/api/v1/invitations/{estate.invitation['token']}/accept", headers=mallory.auth
    ) as r:
        await assert_problem(r, (403, 404, 410), stack=stack)
    # Alice's public profile is visible, her email is not.
    async with http.get(f"{gw}/api/v1/users/{estate.alice.id}", headers=mallory.auth) as r:
        assert r.status == 200
        assert "email" not in await r.json()
    after = await snapshot(http, stack, estate)
    assert after == before
    assert after["key_works"] is True
    assert [m["user_id"] for m in after["members"]["items"]] == [estate.alice.id]


async def test_an_org_member_cannot_reach_another_orgs_things_through_their_own_org(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Mallory is an admin of her org; Alice's org file and team stay out of reach."""
    gw = stack.gateway
    estate = await build_estate(http, stack, "Orga")
    mallory = await new_user(stack, "Admin")
    own = await created(
        http,
        f"{gw}/api/v1/orgs",
        mallory.auth,
        json={"name": "M2", "slug": f"m2-{uuid.uuid4().hex[:10]}"},
    )
    form = aiohttp.FormData()
    form.add_field("org_id", estate.org["id"])  # upload into Alice's org: not a member
    form.add_field("file", b"planted\n", filename="planted.txt", content_type="text/plain")
    async with http.post(f"{gw}/api/v1/files", headers=mallory.auth, data=form) as r:
        await assert_problem(r, (403, 404), stack=stack)
    form = aiohttp.FormData()
    form.add_field("org_id", estate.org["id"])
    form.add_field("file", b"alice org doc\n", filename="org.txt", content_type="text/plain")
    status, org_file = await call(http, "POST", f"{gw}/api/v1/files", estate.alice.auth, data=form)
    assert status == 201, org_file
    for path in (f"/api/v1/files/{org_file['id']}", f"/api/v1/files/{org_file['id']}/content"):
        async with http.get(f"{gw}{path}", headers=mallory.auth) as r:
            await assert_problem(r, 404, "NOT_FOUND", stack=stack)
    async with http.get(f"{gw}/api/v1/files?org_id={own['id']}", headers=mallory.auth) as r:
        assert r.status == 200
        assert (await r.json())["items"] == []
    status, listing = await call(
        http, "GET", f"{gw}/api/v1/files?org_id={estate.org['id']}", estate.alice.auth
    )
    assert status == 200
    assert [f["id"] for f in listing["items"]] == [org_file["id"]]
