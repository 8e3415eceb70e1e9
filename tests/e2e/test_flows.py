"""Whole-platform flows through the gateway: what a client of the public API sees."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.e2e.stack import Stack, eventually

PASSWORD = "a long enough passphrase 42"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def register_and_login(
    http: aiohttp.ClientSession, stack: Stack, name: str = "Ada"
) -> tuple[str, dict[str, str], str]:
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
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
    return user["id"], {"Authorization": f"Bearer {tokens['access_token']}"}, email


async def test_register_login_me_is_cached_per_user_and_fresh_after_patch(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    user_id, auth, email = await register_and_login(http, stack, "Ada")
    _, bob, _ = await register_and_login(http, stack, "Bob")
    me = f"{stack.gateway}/api/v1/users/me"
    async with http.get(me, headers=auth) as first:
        assert first.status == 200
        assert (await first.json())["email"] == email
        assert first.headers["X-Cache-Status"] in {"MISS", "BYPASS"}
        assert "Surrogate-Key" not in first.headers
        assert first.headers["X-Request-ID"]
    async with http.get(me, headers=auth) as second:
        assert second.headers["X-Cache-Status"] == "HIT"
        etag = second.headers["ETag"]
    async with http.get(me, headers=bob) as other:
        assert (await other.json())["id"] != user_id  # never Alice's cached entry
    async with http.get(me, headers={**auth, "If-None-Match": etag}) as not_modified:
        assert not_modified.status == 304
    async with http.patch(me, headers=auth, json={"display_name": "Ada L."}) as patched:
        assert patched.status == 200
    async with http.get(me, headers=auth) as fresh:
        assert (await fresh.json())["display_name"] == "Ada L."


async def test_logout_kills_the_access_token_on_the_next_request(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, auth, _ = await register_and_login(http, stack, "Cy")
    me = f"{stack.gateway}/api/v1/users/me"
    async with http.get(me, headers=auth) as ok:
        assert ok.status == 200
    async with http.post(f"{stack.gateway}/api/v1/auth/logout", headers=auth, json={}) as out:
        assert out.status == 204
    async with http.get(me, headers=auth) as dead:
        assert dead.status == 401
        assert dead.content_type == "application/problem+json"
        assert (await dead.json())["code"] == "UNAUTHENTICATED"


async def create_org(http: aiohttp.ClientSession, gw: str, owner: dict[str, str]) -> Any:
    slug = f"org-{uuid.uuid4().hex[:8]}"
    async with http.post(f"{gw}/api/v1/orgs", headers=owner, json={"name": "O", "slug": slug}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_org_file_sharing_and_user_deleted_cascade(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    owner_id, owner, _ = await register_and_login(http, stack, "Owner")
    member_id, member, member_email = await register_and_login(http, stack, "Member")
    _, outsider, _ = await register_and_login(http, stack, "Outsider")
    gw = stack.gateway
    org = await create_org(http, gw, owner)
    async with http.post(
        f"{gw}/api/v1/orgs/{org['id']}/invitations",
        headers=owner,
        json={"email": member_email, "role": "member"},
    ) as r:
        assert r.status == 201, await r.text()
        invitation = await r.json()
    accept = f"{gw}/api/v1/invitations/{invitation['token']}/accept"

    async def accepted() -> bool:
        async with http.post(accept, headers=member) as r:
            return r.status == 200

    assert await eventually(accepted, timeout=15)
    form = aiohttp.FormData()
    form.add_field("org_id", org["id"])
    form.add_field(
        "file", b"hello org\n", filename="../../etc/notes.txt", content_type="text/plain"
    )
    async with http.post(f"{gw}/api/v1/files", headers=owner, data=form) as r:
        assert r.status == 201, await r.text()
        shared = await r.json()
    assert "/" not in shared["name"]

    async def member_reads() -> bool:  # the files service learns membership from events
        async with http.get(f"{gw}/api/v1/files/{shared['id']}/content", headers=member) as r:
            return r.status == 200 and await r.read() == b"hello org\n"

    assert await eventually(member_reads, timeout=15)
    async with http.get(f"{gw}/api/v1/files/{shared['id']}", headers=outsider) as r:
        assert r.status == 404
    async with http.get(f"{gw}/api/v1/orgs/{org['id']}", headers=outsider) as r:
        assert r.status == 404

    # The owner deletes their account: the member becomes owner, the org's file stays.
    async with http.delete(f"{gw}/api/v1/users/me", headers=owner) as r:
        assert r.status == 204

    async def member_is_owner() -> bool:
        async with http.get(f"{gw}/api/v1/orgs/{org['id']}", headers=member) as r:
            return r.status == 200 and (await r.json())["role"] == "owner"

    assert await eventually(member_is_owner, timeout=15)
    async with http.get(f"{gw}/api/v1/files/{shared['id']}", headers=member) as r:
        assert r.status == 200
    assert owner_id != member_id


async def test_an_uploaded_image_gets_a_thumbnail_through_the_bus(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, user, _ = await register_and_login(http, stack, "Painter")
    picture = io.BytesIO()
    Image.new("RGB", (800, 400), (10, 120, 200)).save(picture, "PNG")
    headers = {**user, "Content-Type": "image/png"}
    async with http.post(
        f"{stack.gateway}/api/v1/files", params={"name": "sky.png"}, headers=headers,
        data=picture.getvalue(),
    ) as r:  # fmt: skip
        assert r.status == 201, await r.text()
        file_id = (await r.json())["id"]
    url = f"{stack.gateway}/api/v1/files/{file_id}/thumbnail"

    async def rendered() -> bytes | None:  # file.uploaded -> the files service's own consumer
        async with http.get(url, headers=user) as r:
            return await r.read() if r.status == 200 else None

    thumbnail = await eventually(rendered, timeout=15)
    assert thumbnail is not None
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.size == (256, 128)


async def test_api_key_works_until_revoked(stack: Stack, http: aiohttp.ClientSession) -> None:
    _, auth, _ = await register_and_login(http, stack, "Keys")
    gw = stack.gateway
    async with http.post(
        f"{gw}/api/v1/api-keys", headers=auth, json={"name": "ci", "scopes": ["users:read"]}
    ) as r:
        assert r.status == 201, await r.text()
        key = await r.json()
    headers = {"X-API-Key": key["key"]}
    async with http.get(f"{gw}/api/v1/users/me", headers=headers) as r:
        assert r.status == 200, await r.text()
    async with http.delete(f"{gw}/api/v1/api-keys/{key['id']}", headers=auth) as r:
        assert r.status == 204
    async with http.get(f"{gw}/api/v1/users/me", headers=headers) as r:
        assert r.status == 401
    assert key["key"] not in stack.logs()


async def test_unknown_route_and_internal_paths_are_problem_404(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    for path in ("/api/v1/nope", "/internal/v1/api-keys/resolve"):
        async with http.post(f"{stack.gateway}{path}", json={"key": "x"}) as r:
            assert r.status in (404, 405)
            assert r.content_type == "application/problem+json"


async def test_a_404_is_not_cached_past_the_membership_that_ends_it(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, owner, _ = await register_and_login(http, stack, "Owner")
    _, member, member_email = await register_and_login(http, stack, "Joiner")
    gw = stack.gateway
    org = await create_org(http, gw, owner)
    org_url = f"{gw}/api/v1/orgs/{org['id']}"
    async with http.get(org_url, headers=member) as r:  # a cached route, not a member yet
        assert r.status == 404
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Cache-Status"] == "MISS"
    async with http.post(
        f"{org_url}/invitations", headers=owner, json={"email": member_email, "role": "member"}
    ) as r:
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
    async with http.post(f"{gw}/api/v1/invitations/{token}/accept", headers=member) as r:
        assert r.status == 200, await r.text()
    async with http.get(org_url, headers=member) as r:  # at once, not after the 30 s TTL
        assert r.status == 200, await r.text()
        assert (await r.json())["id"] == org["id"]
