"""Members: listing, role changes, removal, leaving, and the last-owner rules (also under races)."""

from __future__ import annotations

import asyncio

import pytest

from tests.services.orgs.conftest import Api


async def test_members_list_is_paginated_with_link_and_surrogate_key(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    others = [await api.user() for _ in range(3)]
    for user in others:
        await api.join(org_id, user)
    status, body, headers = await api.call(
        "GET", f"/api/v1/orgs/{org_id}/members?limit=2", others[0]
    )
    assert status == 200
    assert [(m["user_id"], m["role"]) for m in body["items"]] == [
        (owner, "owner"), (others[0], "member")
    ]  # fmt: skip
    assert set(body["items"][0]) == {"user_id", "role", "joined_at"}
    assert headers["Surrogate-Key"] == f"org:{org_id}"
    assert headers["Link"].startswith(f"</api/v1/orgs/{org_id}/members?limit=2&cursor=")
    status, body, _ = await api.call(
        "GET", f"/api/v1/orgs/{org_id}/members?limit=2&cursor={body['next_cursor']}", owner
    )
    assert [m["user_id"] for m in body["items"]] == others[1:]
    assert body["next_cursor"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "cursor=%25%25%25"])
async def test_bad_paging_parameters_are_refused(api: Api, query: str) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    status, body, _ = await api.call("GET", f"/api/v1/orgs/{org_id}/members?{query}", owner)
    assert status in (400, 422)
    assert body["code"] == "VALIDATION_FAILED"


async def test_admin_promotes_member_and_event_is_emitted(api: Api) -> None:
    owner, admin, member = await api.user(), await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, admin, "admin")
    await api.join(org_id, member)
    status, body, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}/members/{member}", admin, {"role": "admin"}
    )
    assert status == 200
    assert (body["org_id"], body["user_id"], body["role"]) == (org_id, member, "admin")
    assert (await api.roles(org_id))[member] == "admin"
    assert (await api.events("org.member_role_changed"))[-1] == {
        "type": "org.member_role_changed", "org_id": org_id, "user_id": member,
        "role": "admin", "previous_role": "member",
    }  # fmt: skip


async def test_role_change_of_unknown_member_is_404_and_bad_role_is_422(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    status, _, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}/members/nobody", owner, {"role": "admin"}
    )
    assert status == 404
    for role in ("superuser", "", None, {"$ne": "member"}, ["owner"]):
        status, body, _ = await api.call(
            "PATCH", f"/api/v1/orgs/{org_id}/members/{owner}", owner, {"role": role}
        )
        assert (status, body["code"]) == (422, "VALIDATION_FAILED"), role
    assert await api.roles(org_id) == {owner: "owner"}


async def test_last_owner_cannot_demote_remove_or_leave(api: Api) -> None:
    owner, admin = await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, admin, "admin")
    before = len(await api.events())
    status, body, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}/members/{owner}", owner, {"role": "admin"}
    )
    assert (status, body["code"]) == (409, "CONFLICT")
    status, body, _ = await api.call("DELETE", f"/api/v1/orgs/{org_id}/members/{owner}", owner)
    assert (status, body["code"]) == (409, "CONFLICT")
    assert await api.roles(org_id) == {owner: "owner", admin: "admin"}
    assert len(await api.events()) == before


async def test_second_owner_lets_the_first_leave(api: Api) -> None:
    owner, other = await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, other)
    status, _, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}/members/{other}", owner, {"role": "owner"}
    )
    assert status == 200
    status, _, _ = await api.call("DELETE", f"/api/v1/orgs/{org_id}/members/{owner}", owner)
    assert status == 204
    assert await api.roles(org_id) == {other: "owner"}
    assert (await api.events("org.member_removed"))[-1] == {
        "type": "org.member_removed", "org_id": org_id, "user_id": owner, "role": "owner",
        "reason": "left",
    }  # fmt: skip
    status, _, _ = await api.call("GET", f"/api/v1/orgs/{org_id}", owner)
    assert status == 404


async def test_admin_cannot_touch_owners(api: Api) -> None:
    owner, admin = await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, admin, "admin")
    for method, json in (("PATCH", {"role": "member"}), ("DELETE", None)):
        status, body, _ = await api.call(
            method, f"/api/v1/orgs/{org_id}/members/{owner}", admin, json
        )
        assert (status, body["code"]) == (403, "FORBIDDEN")
    status, _, _ = await api.call(
        "PATCH", f"/api/v1/orgs/{org_id}/members/{admin}", admin, {"role": "owner"}
    )
    assert status == 403
    assert await api.roles(org_id) == {owner: "owner", admin: "admin"}


async def test_removed_member_leaves_the_orgs_teams(api: Api) -> None:
    owner, member = await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, member)
    team_ids = []
    for name in ("a", "b"):
        _, team, _ = await api.call("POST", f"/api/v1/orgs/{org_id}/teams", owner, {"name": name})
        team_ids.append(team["id"])
        status, _, _ = await api.call(
            "PUT", f"/api/v1/orgs/{org_id}/teams/{team['id']}/members/{member}", owner
        )
        assert status == 204
    status, _, _ = await api.call("DELETE", f"/api/v1/orgs/{org_id}/members/{member}", owner)
    assert status == 204
    assert await api.db["team_members"].count_documents({"user_id": member}) == 0
    _, teams, _ = await api.call("GET", f"/api/v1/orgs/{org_id}/teams", owner)
    assert [t["member_count"] for t in teams["items"]] == [0, 0]
    assert (await api.events("org.member_removed"))[-1]["reason"] == "removed"


@pytest.mark.parametrize("attempt", range(5))
async def test_concurrent_self_demotions_keep_an_owner(api: Api, attempt: int) -> None:
    first, second = await api.user(), await api.user()
    org_id = await api.org(first)
    await api.join(org_id, second, "owner")
    results = await asyncio.gather(
        *(
            api.call("PATCH", f"/api/v1/orgs/{org_id}/members/{u}", u, {"role": "admin"})
            for u in (first, second)
        )
    )
    assert sorted(status for status, _, _ in results) == [200, 409]
    roles = await api.roles(org_id)
    assert sorted(roles.values()) == ["admin", "owner"]
    assert len(await api.events("org.member_role_changed")) == 1


@pytest.mark.parametrize("attempt", range(5))
async def test_concurrent_cross_demotions_and_leaves_keep_an_owner(api: Api, attempt: int) -> None:
    first, second = await api.user(), await api.user()
    org_id = await api.org(first)
    await api.join(org_id, second, "owner")
    results = await asyncio.gather(
        api.call("PATCH", f"/api/v1/orgs/{org_id}/members/{second}", first, {"role": "member"}),
        api.call("PATCH", f"/api/v1/orgs/{org_id}/members/{first}", second, {"role": "member"}),
        api.call("DELETE", f"/api/v1/orgs/{org_id}/members/{first}", first),
        api.call("DELETE", f"/api/v1/orgs/{org_id}/members/{second}", second),
    )
    assert all(status in (200, 204, 403, 404, 409) for status, _, _ in results), results
    roles = await api.roles(org_id)
    assert list(roles.values()).count("owner") == 1, (roles, [r[0] for r in results])
