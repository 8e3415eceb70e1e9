"""Invitations: hashed single-use tokens that expire, email matching, re-invites, revocation."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.test_utils import TestServer

from libs.common.events import Event
from libs.common.identity import IDENTITY_HEADER, verify_identity
from libs.common.mongo import MONGO
from services.orgs.app import create_app
from services.orgs.events import on_user_upserted
from services.orgs.keys import ORGS
from services.orgs.settings import Settings
from tests.conftest import TEST_SECRET
from tests.services.orgs.conftest import Api, Client, new_id


async def test_invitation_is_shown_once_stored_hashed_and_announced(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner, slug="acme", name="Acme Inc")
    status, body, headers = await api.call(
        "POST", f"/api/v1/orgs/{org_id}/invitations", owner,
        {"email": " Carol@Example.COM ", "role": "admin"},
    )  # fmt: skip
    assert status == 201
    assert set(body) == {"id", "org_id", "email", "role", "token", "created_at", "expires_at"}
    assert (body["email"], body["role"], body["org_id"]) == ("carol@example.com", "admin", org_id)
    assert len(body["token"]) >= 43  # 32 random bytes, URL-safe base64
    assert headers["Cache-Control"] == "no-store"
    created = datetime.fromisoformat(body["created_at"])
    assert datetime.fromisoformat(body["expires_at"]) - created == timedelta(days=7)
    stored = await api.db["invitations"].find_one({})
    assert stored["token_hash"] == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in str(stored)
    [event] = await api.events("org.invitation_created")
    assert event == {
        "type": "org.invitation_created", "org_id": org_id, "org_name": "Acme Inc",
        "org_slug": "acme", "invitation_id": body["id"], "inviter_id": owner,
        "email": "carol@example.com", "role": "admin", "token": body["token"],
        "expires_at": event["expires_at"],
    }  # fmt: skip
    assert datetime.fromisoformat(event["expires_at"]) == datetime.fromisoformat(body["expires_at"])


async def test_accepting_joins_the_org_once(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com", "admin")
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert status == 200
    assert (body["org_id"], body["user_id"], body["role"]) == (org_id, carol, "admin")
    assert (await api.roles(org_id))[carol] == "admin"
    assert (await api.events("org.member_added"))[-1]["user_id"] == carol
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert (status, body["code"]) == (410, "GONE")
    stored = await api.db["invitations"].find_one({})
    assert (stored["status"], stored["accepted_by"]) == ("accepted", carol)


async def test_expired_invitation_is_gone_and_stores_nothing(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com")
    await api.db["invitations"].update_one(
        {}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert (status, body["code"]) == (410, "GONE")
    assert carol not in await api.roles(org_id)
    _, listing, _ = await api.call("GET", f"/api/v1/orgs/{org_id}/invitations", owner)
    assert [i["status"] for i in listing["items"]] == ["expired"]


async def test_email_mismatch_is_forbidden_and_keeps_the_invitation(api: Api) -> None:
    owner = await api.user()
    carol, mallory = await api.user("carol@example.com"), await api.user("mallory@example.com")
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com")
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", mallory)
    assert (status, body["code"]) == (403, "FORBIDDEN")
    assert mallory not in await api.roles(org_id)
    status, _, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert status == 200


async def test_reinviting_replaces_the_pending_invitation(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    old = await api.invite(org_id, owner, "carol@example.com", "member")
    new = await api.invite(org_id, owner, "CAROL@example.com", "admin")
    _, listing, headers = await api.call("GET", f"/api/v1/orgs/{org_id}/invitations", owner)
    assert [(i["email"], i["role"], i["status"]) for i in listing["items"]] == [
        ("carol@example.com", "admin", "pending")
    ]
    assert "token" not in listing["items"][0]
    assert headers["Surrogate-Key"] == f"org:{org_id}"
    status, _, _ = await api.call("POST", f"/api/v1/invitations/{old}/accept", carol)
    assert status == 410
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{new}/accept", carol)
    assert (status, body["role"]) == (200, "admin")


async def test_revoked_invitation_is_gone(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com")
    _, listing, _ = await api.call("GET", f"/api/v1/orgs/{org_id}/invitations", owner)
    invitation_id = listing["items"][0]["id"]
    path = f"/api/v1/orgs/{org_id}/invitations/{invitation_id}"
    status, _, _ = await api.call("DELETE", path, owner)
    assert status == 204
    status, _, _ = await api.call("DELETE", path, owner)
    assert status == 404
    status, _, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert status == 410
    _, listing, _ = await api.call("GET", f"/api/v1/orgs/{org_id}/invitations", owner)
    assert listing["items"] == []


async def test_unknown_token_is_404(api: Api) -> None:
    carol = await api.user()
    for token in ("nope", "x" * 300, "%24gt"):
        status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
        assert (status, body["code"]) == (404, "NOT_FOUND"), token


async def test_inviting_a_member_is_a_conflict(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    await api.join(org_id, carol)
    status, body, _ = await api.call(
        "POST", f"/api/v1/orgs/{org_id}/invitations", owner, {"email": "carol@example.com"}
    )
    assert (status, body["code"]) == (409, "CONFLICT")


async def test_accepting_when_already_a_member_is_a_conflict(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    await api.join(org_id, carol)
    token = await api.invite(org_id, owner, "carol.new@example.com", "admin")
    # Carol changes her address to the invited one after the invitation went out.
    event = Event(
        type="user.updated", source="users",
        data={"user_id": carol, "email": "carol.new@example.com"},
    )  # fmt: skip
    await on_user_upserted(api.client.app[ORGS], event)
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
    assert (status, body["code"]) == (409, "CONFLICT")
    assert (await api.roles(org_id))[carol] == "member"
    stored = await api.db["invitations"].find_one({"email": "carol.new@example.com"})
    assert stored["status"] == "pending"


async def test_invalid_invitation_bodies_are_refused(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    for body in (
        {"email": "not-an-email"},
        {"email": {"$gt": ""}},
        {"email": "a@example.com", "role": "god"},
        {"email": "a@example.com", "token": "chosen-by-me"},
        {"email": "a@example.com", "expires_at": "2999-01-01T00:00:00Z"},
        {},
    ):
        status, answer, _ = await api.call(
            "POST", f"/api/v1/orgs/{org_id}/invitations", owner, body
        )
        assert (status, answer["code"]) == (422, "VALIDATION_FAILED"), body
    assert await api.db["invitations"].count_documents({}) == 0


async def test_invitation_lifetime_is_a_setting(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings
) -> None:
    client = await aiohttp_client(
        create_app(settings.model_copy(update={"invitation_ttl_seconds": 3600}))
    )
    api = Api(client)
    try:
        owner = await api.user()
        org_id = await api.org(owner)
        _, body, _ = await api.call(
            "POST", f"/api/v1/orgs/{org_id}/invitations", owner, {"email": "c@example.com"}
        )
        lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
            body["created_at"]
        )
        assert lifetime == timedelta(hours=1)
    finally:
        await client.app[MONGO].client.drop_database(settings.mongodb_database)


async def test_unknown_email_is_asked_of_the_users_service(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings
) -> None:
    carol = new_id()
    seen: list[str] = []

    async def user(request: web.Request) -> web.Response:
        who = verify_identity(request.headers[IDENTITY_HEADER], TEST_SECRET)
        seen.append(f"{who.kind}:{who.id}")
        if request.match_info["id"] != carol:
            return web.json_response({"code": "NOT_FOUND"}, status=404)
        return web.json_response({"id": carol, "email": "Carol@Example.com"})

    users = web.Application()
    users.router.add_get("/api/v1/users/{id}", user)
    server = TestServer(users)
    await server.start_server()
    try:
        client = await aiohttp_client(
            create_app(settings.model_copy(update={"users_url": str(server.make_url("/"))}))
        )
        api = Api(client)
        owner = await api.user()
        org_id = await api.org(owner)
        token = await api.invite(org_id, owner, "carol@example.com")
        status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", carol)
        assert (status, body["user_id"]) == (200, carol)
        assert seen == ["service:orgs"]
        assert await api.email(carol) == "carol@example.com"  # remembered locally
        token = await api.invite(org_id, owner, "dave@example.com")
        status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", new_id())
        assert (status, body["code"]) == (403, "FORBIDDEN")
        await client.app[MONGO].client.drop_database(settings.mongodb_database)
    finally:
        await server.close()


async def test_unreachable_users_service_is_503_for_unknown_users(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com")
    status, body, _ = await api.call("POST", f"/api/v1/invitations/{token}/accept", new_id())
    assert (status, body["code"]) == (503, "UPSTREAM_UNAVAILABLE")
    assert "127.0.0.1" not in body["detail"]
    assert (await api.db["invitations"].find_one({}))["status"] == "pending"


async def test_double_submitted_accept_joins_once(api: Api) -> None:
    owner, carol = await api.user(), await api.user("carol@example.com")
    org_id = await api.org(owner)
    token = await api.invite(org_id, owner, "carol@example.com")
    results = await asyncio.gather(
        *(api.call("POST", f"/api/v1/invitations/{token}/accept", carol) for _ in range(3))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses[0] == 200
    assert all(status in (409, 410) for status in statuses[1:]), statuses
    assert await api.db["memberships"].count_documents({"user_id": carol}) == 1
    assert len([e for e in await api.events("org.member_added") if e["user_id"] == carol]) == 1
