"""The contract's Users table: profiles, search, batch fetch, self-deletion, administration."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis

from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity
from tests.services.users.conftest import (
    PASSWORD,
    Users,
    identity_for,
    outbox_events,
    service_identity,
    user_identity,
)
from tests.services.users.test_auth import problem, users_prefix

USER_KEYS = {"id", "email", "display_name", "roles", "created_at", "updated_at"}


async def test_me_returns_the_user_object_with_a_cache_tag(users: Users) -> None:
    user, tokens = await users.signup("me@example.com")
    resp = await users.client.get("/api/v1/users/me", headers=identity_for(tokens["access_token"]))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == USER_KEYS
    assert body == user
    assert resp.headers["Surrogate-Key"] == f"user:{user['id']}"


async def test_me_needs_an_identity(users: Users) -> None:
    await problem(await users.client.get("/api/v1/users/me"), 401, "UNAUTHENTICATED")
    forged = sign_identity(Principal(id="someone"), "not-the-internal-secret")
    for value in (forged, "v1.e30.AAAA", "garbage"):
        resp = await users.client.get("/api/v1/users/me", headers={IDENTITY_HEADER: value})
        await problem(resp, 401, "UNAUTHENTICATED")


async def test_patch_me_updates_the_display_name_and_emits_user_updated(
    users: Users, db: Any
) -> None:
    user, tokens = await users.signup()
    headers = identity_for(tokens["access_token"])
    resp = await users.client.patch(
        "/api/v1/users/me", json={"display_name": "Grace"}, headers=headers
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["display_name"] == "Grace"
    # One fixed-width format (milliseconds, Z), so timestamps compare and sort as strings.
    for stamp in (body["updated_at"], body["created_at"], user["updated_at"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    assert body["updated_at"] >= user["updated_at"]
    assert resp.headers["Surrogate-Key"] == f"user:{user['id']}"
    [event] = await outbox_events(db, "user.updated")
    assert event["data"] == {"user_id": user["id"], "display_name": "Grace"}


@pytest.mark.parametrize(
    "body",
    [
        {"roles": ["admin"]},
        {"email": "new@example.com"},
        {"display_name": ""},
        {"display_name": "x" * 101},
        {"disabled": False},
        {"password_hash": "x"},
    ],
)
async def test_patch_me_refuses_mass_assignment_and_bad_values(
    users: Users, db: Any, body: dict[str, Any]
) -> None:
    _, tokens = await users.signup()
    before = await db["users"].find_one({})
    resp = await users.client.patch(
        "/api/v1/users/me", json=body, headers=identity_for(tokens["access_token"])
    )
    await problem(resp, 422, "VALIDATION_FAILED")
    assert await db["users"].find_one({}) == before
    assert await outbox_events(db, "user.updated") == []


async def test_delete_me_removes_the_account_and_kills_its_tokens(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    user, tokens = await users.signup("gone@example.com")
    headers = identity_for(tokens["access_token"])
    key = await (
        await users.client.post("/api/v1/api-keys", json={"name": "ci"}, headers=headers)
    ).json()
    resp = await users.client.delete("/api/v1/users/me", headers=headers)
    assert resp.status == 204
    assert await db["users"].count_documents({}) == 0
    assert [e["data"] for e in await outbox_events(db, "user.deleted")] == [{"user_id": user["id"]}]
    assert [e["data"]["key_id"] for e in await outbox_events(db, "apikey.revoked")] == [key["id"]]
    assert await redis.get(f"{users_prefix(users)}user:{user['id']}:not_before") is not None
    dead = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(dead, 401, "UNAUTHENTICATED")
    await problem(await users.client.get("/api/v1/users/me", headers=headers), 404, "NOT_FOUND")
    # The email is free again.
    await users.register("gone@example.com")


async def test_public_profile_shows_email_only_to_self_admins_and_services(users: Users) -> None:
    target, target_tokens = await users.signup("target@example.com", display_name="Target")
    other, other_tokens = await users.signup()
    path = f"/api/v1/users/{target['id']}"
    resp = await users.client.get(path, headers=identity_for(other_tokens["access_token"]))
    assert resp.status == 200
    assert await resp.json() == {
        "id": target["id"],
        "display_name": "Target",
        "created_at": target["created_at"],
    }
    assert resp.headers["Surrogate-Key"] == f"user:{target['id']}"
    for headers in (
        identity_for(target_tokens["access_token"]),
        user_identity(other["id"], roles=("user", "admin")),
        service_identity(),  # orgs matches invitations by email
    ):
        body = await (await users.client.get(path, headers=headers)).json()
        assert body["email"] == "target@example.com"


@pytest.mark.parametrize("user_id", ["0" * 24, "not-an-id", "x" * 300])
async def test_unknown_user_is_404(users: Users, user_id: str) -> None:
    _, tokens = await users.signup()
    resp = await users.client.get(
        f"/api/v1/users/{user_id}", headers=identity_for(tokens["access_token"])
    )
    await problem(resp, 404, "NOT_FOUND")


async def test_search_by_display_name_or_email_prefix_paginates(users: Users) -> None:
    for i in range(5):
        await users.register(f"zed{i}@example.com", display_name=f"Alpha {i}")
    await users.register("alpha.mail@example.com", display_name="Omega")
    await users.register("other@example.com", display_name="Beta")
    _me, tokens = await users.signup("searcher@example.com", display_name="Searcher")
    headers = identity_for(tokens["access_token"])
    seen: list[str] = []
    path = "/api/v1/users?q=ALPHA&limit=4"
    while path:
        resp = await users.client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        seen += [u["display_name"] for u in body["items"]]
        assert all("email" not in u for u in body["items"])
        if body["next_cursor"]:
            link = resp.headers["Link"]
            assert link.endswith('>; rel="next"')
            path = link[1 : link.index(">")]
        else:
            assert "Link" not in resp.headers
            path = ""
    assert sorted(seen) == sorted([f"Alpha {i}" for i in range(5)] + ["Omega"])
    # Regex metacharacters are literal.
    body = await (await users.client.get("/api/v1/users?q=.*", headers=headers)).json()
    assert body["items"] == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=x", "cursor=%%%", "q=" + "a" * 101]
)
async def test_search_refuses_bad_query(users: Users, query: str) -> None:
    _, tokens = await users.signup()
    resp = await users.client.get(
        f"/api/v1/users?{query}", headers=identity_for(tokens["access_token"])
    )
    assert resp.status in (400, 422)
    assert resp.content_type == "application/problem+json"


async def test_batch_returns_users_in_request_order_without_missing_ones(users: Users) -> None:
    a = await users.register(display_name="A")
    b = await users.register(display_name="B")
    me, tokens = await users.signup(display_name="Me")
    headers = identity_for(tokens["access_token"])
    ids = [b["id"], "0" * 24, me["id"], "junk", a["id"], b["id"]]
    resp = await users.client.post("/api/v1/users/batch", json={"ids": ids}, headers=headers)
    assert resp.status == 200
    items = (await resp.json())["items"]
    assert [u["id"] for u in items] == [b["id"], me["id"], a["id"]]
    assert "email" in items[1]
    assert "email" not in items[0]
    resp = await users.client.post(
        "/api/v1/users/batch", json={"ids": ["a"] * 101}, headers=headers
    )
    await problem(resp, 422, "VALIDATION_FAILED")
    await problem(
        await users.client.post("/api/v1/users/batch", json={"ids": ids}), 401, "UNAUTHENTICATED"
    )


# -- administration ------------------------------------------------------------------------


async def _admin(users: Users) -> tuple[dict[str, Any], dict[str, str]]:
    admin = await users.register("admin@example.com", display_name="Admin")
    return admin, user_identity(admin["id"], roles=("user", "admin"))


async def test_admin_lists_users_with_filters(users: Users, db: Any) -> None:
    _admin_user, headers = await _admin(users)
    for i in range(3):
        await users.register(f"u{i}@example.com", display_name=f"U{i}")
    await db["users"].update_one({"email": "u1@example.com"}, {"$set": {"disabled": True}})
    resp = await users.client.get("/api/v1/admin/users?limit=2", headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert len(body["items"]) == 2
    assert body["next_cursor"]
    assert {"disabled", "email", "roles"} <= set(body["items"][0])
    body = await (
        await users.client.get("/api/v1/admin/users?disabled=true", headers=headers)
    ).json()
    assert [u["email"] for u in body["items"]] == ["u1@example.com"]
    body = await (await users.client.get("/api/v1/admin/users?role=admin", headers=headers)).json()
    assert body["items"] == []  # roles in Mongo are what counts, not the header's claim
    await problem(
        await users.client.get("/api/v1/admin/users?role=root", headers=headers),
        422,
        "VALIDATION_FAILED",
    )


async def test_non_admins_cannot_administer(users: Users, db: Any) -> None:
    user, tokens = await users.signup()
    headers = identity_for(tokens["access_token"])
    await problem(await users.client.get("/api/v1/admin/users", headers=headers), 403, "FORBIDDEN")
    resp = await users.client.patch(
        f"/api/v1/admin/users/{user['id']}", json={"roles": ["user", "admin"]}, headers=headers
    )
    await problem(resp, 403, "FORBIDDEN")
    assert (await db["users"].find_one({}))["roles"] == ["user"]
    await problem(await users.client.get("/api/v1/admin/users"), 401, "UNAUTHENTICATED")


async def test_admin_sets_roles_with_audit_and_event(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    admin, headers = await _admin(users)
    user, _tokens = await users.signup()
    resp = await users.client.patch(
        f"/api/v1/admin/users/{user['id']}", json={"roles": ["admin"]}, headers=headers
    )
    assert resp.status == 200
    assert (await resp.json())["roles"] == ["user", "admin"]
    [event] = await outbox_events(db, "user.updated")
    assert event["data"] == {"user_id": user["id"], "roles": ["user", "admin"]}
    audit = await db["audit_log"].find_one({"action": "user.roles_changed"})
    assert (audit["user_id"], audit["actor_id"]) == (user["id"], admin["id"])
    # Promotion does not log the user out; demotion does (tokens carry roles).
    not_before = f"{users_prefix(users)}user:{user['id']}:not_before"
    assert not await redis.exists(not_before)
    new = await users.login(user["email"])
    assert jwt.decode(new["access_token"], options={"verify_signature": False})["roles"] == [
        "user",
        "admin",
    ]
    resp = await users.client.patch(
        f"/api/v1/admin/users/{user['id']}", json={"roles": ["user"]}, headers=headers
    )
    assert resp.status == 200
    assert await redis.exists(not_before)


async def test_disabling_a_user_kills_tokens_and_keys(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:

    _admin_user, headers = await _admin(users)
    user, tokens = await users.signup()
    key = await (
        await users.client.post(
            "/api/v1/api-keys", json={"name": "k"}, headers=identity_for(tokens["access_token"])
        )
    ).json()
    resp = await users.client.patch(
        f"/api/v1/admin/users/{user['id']}", json={"disabled": True}, headers=headers
    )
    assert resp.status == 200
    assert (await resp.json())["disabled"] is True
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    prefix = users_prefix(users)
    assert await redis.get(f"{prefix}user:{user['id']}:not_before") is not None
    assert await redis.exists(f"{prefix}revoked:sid:{sid}")
    resp = await users.client.post(
        "/internal/v1/api-keys/resolve", json={"key": key["key"]}, headers=service_identity()
    )
    await problem(resp, 404, "NOT_FOUND")
    resp = await users.client.post(
        "/api/v1/auth/login",
        json={"email": user["email"], "password": "correct horse battery staple"},
    )
    await problem(resp, 403, "FORBIDDEN")
    # Enabled again: keys resolve, the user can sign in.
    resp = await users.client.patch(
        f"/api/v1/admin/users/{user['id']}", json={"disabled": False}, headers=headers
    )
    assert resp.status == 200
    resp = await users.client.post(
        "/internal/v1/api-keys/resolve", json={"key": key["key"]}, headers=service_identity()
    )
    assert resp.status == 200
    await users.login(user["email"])


async def test_admin_cannot_lock_themselves_out(users: Users) -> None:
    admin, headers = await _admin(users)
    for body in ({"disabled": True}, {"roles": ["user"]}):
        resp = await users.client.patch(
            f"/api/v1/admin/users/{admin['id']}", json=body, headers=headers
        )
        await problem(resp, 409, "CONFLICT")


@pytest.mark.parametrize(
    "body", [{"roles": ["root"]}, {"disabled": "maybe"}, {"email": "x@y.z"}, {"roles": "admin"}]
)
async def test_admin_update_refuses_bad_bodies(users: Users, db: Any, body: dict[str, Any]) -> None:
    _, headers = await _admin(users)
    user = await users.register()
    resp = await users.client.patch(f"/api/v1/admin/users/{user['id']}", json=body, headers=headers)
    await problem(resp, 422, "VALIDATION_FAILED")
    assert await outbox_events(db, "user.updated") == []


async def test_admin_update_of_unknown_user_is_404(users: Users) -> None:
    _, headers = await _admin(users)
    resp = await users.client.patch(
        f"/api/v1/admin/users/{'0' * 24}", json={"disabled": True}, headers=headers
    )
    await problem(resp, 404, "NOT_FOUND")


async def test_concurrent_writes_to_one_account_all_succeed(users: Users, db: Any) -> None:
    """Lost races (write conflicts) are run again, never a 500 (found by the soak run)."""
    _, tokens = await users.signup()
    headers = identity_for(tokens["access_token"])
    names = [f"Name {i}" for i in range(12)]
    responses = await asyncio.gather(
        *(
            users.client.patch("/api/v1/users/me", json={"display_name": n}, headers=headers)
            for n in names
        )
    )
    assert [r.status for r in responses] == [200] * len(names)
    final = await (await users.client.get("/api/v1/users/me", headers=headers)).json()
    assert final["display_name"] in names
    assert len(await outbox_events(db, "user.updated")) == len(names)


async def test_concurrent_registrations_all_succeed_once(users: Users, db: Any) -> None:
    emails = [f"racer-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(8)]
    body = {"password": PASSWORD, "display_name": "Racer"}
    responses = await asyncio.gather(
        *(users.client.post("/api/v1/auth/register", json={**body, "email": e}) for e in emails)
    )
    assert [r.status for r in responses] == [201] * len(emails)
    assert await db["users"].count_documents({"email": {"$in": emails}}) == len(emails)
    assert len(await outbox_events(db, "user.created")) == len(emails)
