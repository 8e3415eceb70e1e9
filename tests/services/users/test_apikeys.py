"""API keys: shown once, stored as a digest, scoped and tiered, resolvable by the gateway only."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.users.service.apikeys import SECRET_LENGTH, new_api_key, split_api_key
from tests.services.users.conftest import (
    Users,
    identity_for,
    outbox_events,
    service_identity,
    user_identity,
)
from tests.services.users.test_auth import problem, users_prefix

KEY_FORMAT = re.compile(r"pk_[A-Za-z0-9]{8}_[A-Za-z0-9]{43}")
RESOLVE = "/internal/v1/api-keys/resolve"


async def _key(users: Users, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await users.client.post("/api/v1/api-keys", json={"name": "ci", **body}, headers=headers)
    assert resp.status == 201, await resp.text()
    key: dict[str, Any] = await resp.json()
    return key


async def _all_documents(db: Any) -> str:
    dump = []
    for name in await db.list_collection_names():
        dump += [repr(doc) async for doc in db[name].find({})]
    return "\n".join(dump)


def test_key_format_carries_32_random_bytes() -> None:
    prefix, key = new_api_key()
    assert KEY_FORMAT.fullmatch(key)
    assert split_api_key(key) == prefix
    assert 62**SECRET_LENGTH >= 2**256
    assert len({new_api_key()[1] for _ in range(50)}) == 50
    for bad in ("pk_short_x", key + "x", key.replace("pk_", "sk_"), "pk_" + "_" * 60, ""):
        assert split_api_key(bad) is None


async def test_api_key_is_shown_once_and_never_stored_or_logged(
    users: Users, db: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    user, tokens = await users.signup()
    headers = identity_for(tokens["access_token"])
    created = await _key(users, headers, scopes=["files:read", "files:write"])
    assert set(created) == {
        "id",
        "name",
        "prefix",
        "key",
        "scopes",
        "tier",
        "created_at",
        "last_used_at",
    }
    assert KEY_FORMAT.fullmatch(created["key"])
    assert created["key"].startswith(f"pk_{created['prefix']}_")
    assert (created["tier"], created["scopes"]) == ("free", ["files:read", "files:write"])
    resp = await users.client.post(
        RESOLVE, json={"key": created["key"]}, headers=service_identity()
    )
    assert resp.status == 200
    assert await resp.json() == {
        "key_id": created["id"],
        "user_id": user["id"],
        "scopes": ["files:read", "files:write"],
        "tier": "free",
        "roles": ["user"],
    }
    listed = await (await users.client.get("/api/v1/api-keys", headers=headers)).json()
    assert [k["id"] for k in listed["items"]] == [created["id"]]
    assert "key" not in listed["items"][0]
    assert listed["items"][0]["last_used_at"] is not None
    secret = created["key"].split("_")[2]
    assert secret not in await _all_documents(db)
    out, err = capfd.readouterr()
    assert secret not in out + err
    assert await db["audit_log"].count_documents({"action": "apikey.created"}) == 1


async def test_api_key_works_until_revoked(users: Users, db: Any, redis: Any) -> None:
    user, tokens = await users.signup()
    headers = identity_for(tokens["access_token"])
    created = await _key(users, headers)
    prefix = users_prefix(users)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(f"{prefix}revocations")
        await pubsub.get_message(timeout=1)
        resp = await users.client.delete(f"/api/v1/api-keys/{created['id']}", headers=headers)
        assert resp.status == 204
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    assert b'"apikey"' in message["data"]
    resp = await users.client.post(
        RESOLVE, json={"key": created["key"]}, headers=service_identity()
    )
    await problem(resp, 404, "NOT_FOUND")
    [event] = await outbox_events(db, "apikey.revoked")
    assert event["data"] == {"key_id": created["id"], "user_id": user["id"]}
    listed = await (await users.client.get("/api/v1/api-keys", headers=headers)).json()
    assert listed["items"] == []
    await problem(
        await users.client.delete(f"/api/v1/api-keys/{created['id']}", headers=headers),
        404,
        "NOT_FOUND",
    )


async def test_someone_elses_key_cannot_be_revoked(users: Users, db: Any) -> None:
    _, owner = await users.signup()
    _, other = await users.signup()
    created = await _key(users, identity_for(owner["access_token"]))
    resp = await users.client.delete(
        f"/api/v1/api-keys/{created['id']}", headers=identity_for(other["access_token"])
    )
    await problem(resp, 404, "NOT_FOUND")
    assert await db["api_keys"].count_documents({"revoked_at": None}) == 1
    other_list = await (
        await users.client.get("/api/v1/api-keys", headers=identity_for(other["access_token"]))
    ).json()
    assert other_list["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "k", "scopes": ["NOT A SCOPE"]},
        {"name": "k", "tier": "enterprise"},
        {"name": "k", "user_id": "someone"},
        {"name": "k", "scopes": ["s"] * 33},
        {"scopes": []},
    ],
)
async def test_create_refuses_bad_bodies_and_mass_assignment(
    users: Users, db: Any, body: dict[str, Any]
) -> None:
    _, tokens = await users.signup()
    resp = await users.client.post(
        "/api/v1/api-keys", json=body, headers=identity_for(tokens["access_token"])
    )
    await problem(resp, 422, "VALIDATION_FAILED")
    assert await db["api_keys"].count_documents({}) == 0


async def test_api_keys_cannot_mint_api_keys(users: Users, db: Any) -> None:
    user = await users.register()
    resp = await users.client.post(
        "/api/v1/api-keys", json={"name": "k"}, headers=user_identity(user["id"], kind="api_key")
    )
    await problem(resp, 403, "FORBIDDEN")
    await problem(
        await users.client.post("/api/v1/api-keys", json={"name": "k"}), 401, "UNAUTHENTICATED"
    )
    assert await db["api_keys"].count_documents({}) == 0


async def test_resolve_is_for_services_only(users: Users) -> None:
    _user, tokens = await users.signup()
    created = await _key(users, identity_for(tokens["access_token"]))
    body = {"key": created["key"]}
    await problem(await users.client.post(RESOLVE, json=body), 401, "UNAUTHENTICATED")
    resp = await users.client.post(RESOLVE, json=body, headers=identity_for(tokens["access_token"]))
    await problem(resp, 403, "FORBIDDEN")


@pytest.mark.parametrize("key", ["pk_nope", "x", "pk_AAAAAAAA_" + "A" * 43])
async def test_unknown_or_malformed_keys_resolve_to_404(users: Users, key: str) -> None:
    resp = await users.client.post(RESOLVE, json={"key": key}, headers=service_identity())
    await problem(resp, 404, "NOT_FOUND")


async def test_a_key_with_the_right_prefix_but_wrong_secret_is_404(users: Users) -> None:
    _, tokens = await users.signup()
    created = await _key(users, identity_for(tokens["access_token"]))
    forged = f"pk_{created['prefix']}_" + "A" * 43
    resp = await users.client.post(RESOLVE, json={"key": forged}, headers=service_identity())
    await problem(resp, 404, "NOT_FOUND")


async def test_admin_sets_a_key_tier(users: Users, db: Any) -> None:
    user, tokens = await users.signup()
    created = await _key(users, identity_for(tokens["access_token"]))
    admin = user_identity("a" * 24, roles=("user", "admin"))
    path = f"/api/v1/admin/api-keys/{created['id']}"
    resp = await users.client.patch(path, json={"tier": "pro"}, headers=admin)
    assert resp.status == 200
    body = await resp.json()
    assert body["tier"] == "pro"
    assert "key" not in body
    [event] = await outbox_events(db, "apikey.updated")
    assert event["data"] == {"key_id": created["id"], "user_id": user["id"], "tier": "pro"}
    resolved = await (
        await users.client.post(RESOLVE, json={"key": created["key"]}, headers=service_identity())
    ).json()
    assert resolved["tier"] == "pro"
    # Not an admin, a bad tier, an unknown key.
    resp = await users.client.patch(
        path, json={"tier": "enterprise"}, headers=identity_for(tokens["access_token"])
    )
    await problem(resp, 403, "FORBIDDEN")
    await problem(
        await users.client.patch(path, json={"tier": "gold"}, headers=admin),
        422,
        "VALIDATION_FAILED",
    )
    resp = await users.client.patch(
        f"/api/v1/admin/api-keys/{'0' * 24}", json={"tier": "pro"}, headers=admin
    )
    await problem(resp, 404, "NOT_FOUND")
    assert len(await outbox_events(db, "apikey.updated")) == 1
