"""Orgs CRUD: the contract rows, slugs, Surrogate-Key tags and the events they emit."""

from __future__ import annotations

import asyncio

import pytest

from tests.services.orgs.conftest import Api


async def test_create_org_makes_caller_owner_and_emits_events(api: Api) -> None:
    alice = await api.user()
    status, body, headers = await api.call(
        "POST", "/api/v1/orgs", alice, {"name": "Acme Inc", "slug": "acme"}
    )
    assert status == 201
    assert body["name"] == "Acme Inc"
    assert body["slug"] == "acme"
    assert body["role"] == "owner"
    assert set(body) == {"id", "name", "slug", "created_at", "updated_at", "role"}
    assert headers["Content-Type"].startswith("application/json")
    assert await api.roles(body["id"]) == {alice: "owner"}
    assert await api.events() == [
        {"type": "org.created", "org_id": body["id"], "user_id": alice, "name": "Acme Inc",
         "slug": "acme"},
        {"type": "org.member_added", "org_id": body["id"], "user_id": alice, "role": "owner"},
    ]  # fmt: skip


async def test_taken_slug_is_a_conflict_and_stores_nothing(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.org(alice, slug="acme")
    status, body, headers = await api.call(
        "POST", "/api/v1/orgs", bob, {"name": "Other", "slug": "acme"}
    )
    assert status == 409
    assert body["code"] == "CONFLICT"
    assert headers["Content-Type"] == "application/problem+json"
    assert await api.db["orgs"].count_documents({}) == 1
    assert await api.db["memberships"].count_documents({"user_id": bob}) == 0
    assert len(await api.events("org.created")) == 1


@pytest.mark.parametrize(
    "slug",
    ["a", "A-corp", "-acme", "acme-", "ac_me", "ac me", "x" * 41, "acmé", "", "api", "admin",
     "www", "static", "new", "settings", "help", "about", "login", "orgs"],
)  # fmt: skip
async def test_bad_or_reserved_slug_is_refused(api: Api, slug: str) -> None:
    alice = await api.user()
    status, body, _ = await api.call("POST", "/api/v1/orgs", alice, {"name": "N", "slug": slug})
    assert status == 422
    assert body["code"] == "VALIDATION_FAILED"
    assert body["errors"][0]["field"] == "slug"
    assert await api.db["orgs"].count_documents({}) == 0


@pytest.mark.parametrize("slug", ["ab", "a1", "my-org-2", "x" * 40, "0-0"])
async def test_good_slugs_are_accepted(api: Api, slug: str) -> None:
    status, body, _ = await api.call(
        "POST", "/api/v1/orgs", await api.user(), {"name": "N", "slug": slug}
    )
    assert status == 201, body
    assert body["slug"] == slug


async def test_list_orgs_shows_only_callers_orgs_with_role_and_pages(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    mine = [await api.org(alice) for _ in range(3)]
    theirs = await api.org(bob)
    await api.join(theirs, alice, "admin")
    status, body, headers = await api.call("GET", "/api/v1/orgs?limit=2", alice)
    assert status == 200
    assert [o["id"] for o in body["items"]] == mine[:2]
    assert body["next_cursor"]
    assert 'rel="next"' in headers["Link"]
    tags = headers["Surrogate-Key"].split()
    assert f"user:{alice}" in tags
    assert f"org:{mine[0]}" in tags
    status, body, _ = await api.call(
        "GET", f"/api/v1/orgs?limit=2&cursor={body['next_cursor']}", alice
    )
    assert status == 200
    assert [(o["id"], o["role"]) for o in body["items"]] == [(mine[2], "owner"), (theirs, "admin")]
    assert body["next_cursor"] is None
    status, body, _ = await api.call("GET", "/api/v1/orgs", await api.user())
    assert (status, body["items"]) == (200, [])


async def test_get_org_for_member_with_surrogate_key(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    org_id = await api.org(alice, slug="acme")
    await api.join(org_id, bob)
    status, body, headers = await api.call("GET", f"/api/v1/orgs/{org_id}", bob)
    assert status == 200
    assert body["id"] == org_id
    assert body["role"] == "member"
    assert headers["Surrogate-Key"] == f"org:{org_id}"


async def test_patch_org_updates_name_and_slug(api: Api) -> None:
    alice = await api.user()
    org_id = await api.org(alice, slug="acme")
    status, body, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}", alice, {"name": "Acme 2", "slug": "acme-2"}
    )
    assert status == 200
    assert (body["name"], body["slug"], body["role"]) == ("Acme 2", "acme-2", "owner")
    assert body["updated_at"] > body["created_at"]
    stored = await api.db["orgs"].find_one({})
    assert (stored["name"], stored["slug"]) == ("Acme 2", "acme-2")
    assert (await api.events("org.updated"))[-1] == {
        "type": "org.updated", "org_id": org_id, "name": "Acme 2", "slug": "acme-2"
    }  # fmt: skip


async def test_patch_to_taken_slug_is_a_conflict(api: Api) -> None:
    alice = await api.user()
    await api.org(alice, slug="taken")
    org_id = await api.org(alice, slug="mine")
    status, body, _ = await api.call("PATCH", f"/api/v1/orgs/{org_id}", alice, {"slug": "taken"})
    assert (status, body["code"]) == (409, "CONFLICT")
    assert await api.db["orgs"].count_documents({"slug": "mine"}) == 1


async def test_patch_refuses_mass_assignment(api: Api) -> None:
    alice = await api.user()
    org_id = await api.org(alice, slug="acme")
    for field, value in (("id", "x"), ("role", "owner"), ("created_at", "2020-01-01T00:00:00Z"),
                         ("rev", 0)):  # fmt: skip
        status, body, _ = await api.call("PATCH", f"/api/v1/orgs/{org_id}", alice, {field: value})
        assert status == 422, field
        assert body["errors"][0]["field"] == field
    assert (await api.db["orgs"].find_one({}))["slug"] == "acme"


async def test_delete_org_removes_everything_and_emits_org_deleted(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    org_id = await api.org(alice, slug="acme")
    await api.join(org_id, bob)
    status, team, _ = await api.call("POST", f"/api/v1/orgs/{org_id}/teams", alice, {"name": "t"})
    assert status == 201
    status, _, _ = await api.call(
        "PUT", f"/api/v1/orgs/{org_id}/teams/{team['id']}/members/{bob}", alice
    )
    assert status == 204
    await api.invite(org_id, alice, "later@example.com")
    status, body, _ = await api.call("DELETE", f"/api/v1/orgs/{org_id}", alice)
    assert (status, body) == (204, None)
    for collection in ("orgs", "memberships", "teams", "team_members", "invitations"):
        assert await api.db[collection].count_documents({}) == 0, collection
    assert (await api.events("org.deleted")) == [
        {"type": "org.deleted", "org_id": org_id, "slug": "acme", "name": "Acme"}
    ]
    status, _, _ = await api.call("GET", f"/api/v1/orgs/{org_id}", alice)
    assert status == 404
    # The slug is free again.
    assert await api.org(bob, slug="acme")


async def test_racing_creates_of_one_slug_make_one_org(api: Api) -> None:
    users = [await api.user() for _ in range(4)]
    results = await asyncio.gather(
        *(api.call("POST", "/api/v1/orgs", u, {"name": "Race", "slug": "race"}) for u in users)
    )
    assert sorted(status for status, _, _ in results) == [201, 409, 409, 409]
    assert await api.db["orgs"].count_documents({}) == 1
    assert await api.db["memberships"].count_documents({}) == 1
    assert len(await api.events("org.created")) == 1
