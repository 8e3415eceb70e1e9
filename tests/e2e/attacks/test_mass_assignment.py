"""Mass assignment: privileged or server-owned fields in request bodies are refused (422) or
ignored, never applied."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from tests.e2e.attacks.conftest import PASSWORD, User, assert_problem, client, new_user
from tests.e2e.stack import Stack

EVIL = {
    "roles": ["admin", "user"],
    "role": "admin",
    "is_admin": True,
    "admin": True,
    "tier": "enterprise",
    "owner_id": "000000000000000000000000",
    "id": "000000000000000000000000",
    "_id": "000000000000000000000000",
    "email_verified": True,
    "disabled": False,
    "password_hash": "x",
    "created_at": "2000-01-01T00:00:00Z",
    "scopes": ["admin"],
}


async def refused_or_ignored(resp: aiohttp.ClientResponse, ok: int, stack: Stack) -> Any:
    """The body when the request was accepted (to check what was applied), else None after
    checking it was a 422 problem."""
    if resp.status == ok:
        return await resp.json()
    await assert_problem(resp, 422, "VALIDATION_FAILED", stack=stack)
    return None


async def test_register_cannot_choose_roles_id_or_verification(stack: Stack) -> None:
    email = f"mass-{uuid.uuid4().hex[:10]}@example.com"
    async with client() as http:
        async with http.post(
            f"{stack.gateway}/api/v1/auth/register",
            json={**EVIL, "email": email, "password": PASSWORD, "display_name": "Mass"},
        ) as resp:
            user = await refused_or_ignored(resp, 201, stack)
        if user is None:  # refused: register properly to check login does not grant anything
            return
        assert user["roles"] == ["user"]
        assert user["id"] != EVIL["id"]
        assert "password_hash" not in user
        assert user["created_at"] != EVIL["created_at"]
        async with http.post(
            f"{stack.gateway}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200
            token = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{stack.gateway}/api/v1/admin/users", headers=auth) as resp:
            await assert_problem(resp, 403, "FORBIDDEN", stack=stack)


async def test_patch_me_cannot_raise_roles_or_change_email(stack: Stack) -> None:
    user = await new_user(stack, "Patcher")
    me = f"{stack.gateway}/api/v1/users/me"
    async with client() as http:
        for extra in (
            {"roles": ["admin"]},
            {"email": "admin@example.com"},
            {"id": "x"},
            {"disabled": True},
            {"password_hash": "x"},
            EVIL,
        ):
            async with http.patch(me, headers=user.auth, json={"display_name": "P", **extra}) as r:
                await refused_or_ignored(r, 200, stack)
        async with http.get(me, headers={**user.auth, "Cache-Control": "no-cache"}) as r:
            body = await r.json()
        assert body["roles"] == ["user"]
        assert body["email"] == user.email
        assert body["id"] == user.id
        async with http.get(f"{stack.gateway}/api/v1/admin/users", headers=user.auth) as r:
            await assert_problem(r, 403, "FORBIDDEN", stack=stack)
        # The admin route itself refuses a non-admin trying to promote themselves.
        async with http.patch(
            f"{stack.gateway}/api/v1/admin/users/{user.id}",
            headers=user.auth,
            json={"roles": ["admin"]},
        ) as r:
            await assert_problem(r, 403, "FORBIDDEN", stack=stack)


async def members(http: aiohttp.ClientSession, stack: Stack, org_id: str, who: User) -> list[Any]:
    async with http.get(
        f"{stack.gateway}/api/v1/orgs/{org_id}/members",
        headers={**who.auth, "Cache-Control": "no-cache"},
    ) as r:
        assert r.status == 200
        return [(m["user_id"], m["role"]) for m in (await r.json())["items"]]


async def test_org_bodies_cannot_set_owner_or_id(stack: Stack) -> None:
    founder = await new_user(stack, "Founder")
    victim = await new_user(stack, "Bystander")
    gw = stack.gateway
    async with client() as http:
        body = {
            **EVIL,
            "owner_id": victim.id,
            "name": "Mass Org",
            "slug": f"mo-{uuid.uuid4().hex[:8]}",
        }
        async with http.post(f"{gw}/api/v1/orgs", headers=founder.auth, json=body) as r:
            org = await refused_or_ignored(r, 201, stack)
        if org is None:
            async with http.post(
                f"{gw}/api/v1/orgs",
                headers=founder.auth,
                json={"name": "Mass Org", "slug": body["slug"]},
            ) as r:
                assert r.status == 201
                org = await r.json()
        assert org["id"] != EVIL["id"]
        assert org["role"] == "owner"
        assert await members(http, stack, org["id"], founder) == [(founder.id, "owner")]
        async with http.patch(
            f"{gw}/api/v1/orgs/{org['id']}",
            headers=founder.auth,
            json={
                "name": "Renamed",
                "owner_id": victim.id,
                "id": "x",
                "created_at": "2000-01-01T00:00:00Z",
            },
        ) as r:
            await refused_or_ignored(r, 200, stack)
        assert await members(http, stack, org["id"], founder) == [(founder.id, "owner")]
        async with http.get(f"{gw}/api/v1/orgs/{org['id']}", headers=victim.auth) as r:
            await assert_problem(r, 404, "NOT_FOUND", stack=stack)
        # An invitation cannot carry a role the inviter could not grant in a made-up shape.
        async with http.post(
            f"{gw}/api/v1/orgs/{org['id']}/invitations",
            headers=founder.auth,
            json={"email": victim.email, "role": "superuser"},
        ) as r:
            await assert_problem(r, 422, "VALIDATION_FAILED", stack=stack)


async def test_api_keys_and_files_cannot_choose_tier_or_owner(stack: Stack) -> None:
    user = await new_user(stack, "Keyholder")
    victim = await new_user(stack, "Other")
    gw = stack.gateway
    async with client() as http:
        async with http.post(
            f"{gw}/api/v1/api-keys",
            headers=user.auth,
            json={
                "name": "k",
                "scopes": ["users:read"],
                "tier": "enterprise",
                "user_id": victim.id,
                "id": "x",
            },
        ) as r:
            key = await refused_or_ignored(r, 201, stack)
        if key is not None:
            assert key["tier"] == "free"
            async with http.get(f"{gw}/api/v1/usage", headers={"X-API-Key": key["key"]}) as r:
                assert r.status == 200
                assert (await r.json())["tier"] == "free"
            async with http.get(f"{gw}/api/v1/users/me", headers={"X-API-Key": key["key"]}) as r:
                assert (await r.json())["id"] == user.id
        # Raw upload with owner/org claims in the query; multipart with an owner_id field.
        async with http.post(
            f"{gw}/api/v1/files?name=a.txt&owner_id={victim.id}&id=x",
            headers={**user.auth, "Content-Type": "text/plain"},
            data=b"a\n",
        ) as r:
            stored = await refused_or_ignored(r, 201, stack)
        if stored is not None:
            assert stored["owner_id"] == user.id
            assert stored["org_id"] is None
        form = aiohttp.FormData()
        form.add_field("owner_id", victim.id)
        form.add_field("size", "1")
        form.add_field("file", b"b\n", filename="b.txt", content_type="text/plain")
        async with http.post(f"{gw}/api/v1/files", headers=user.auth, data=form) as r:
            stored = await refused_or_ignored(r, 201, stack)
        if stored is not None:
            assert stored["owner_id"] == user.id
            assert stored["size"] == 2
        async with http.get(f"{gw}/api/v1/files", headers=victim.auth) as r:
            assert (await r.json())["items"] == []
