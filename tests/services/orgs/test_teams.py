"""Teams: CRUD, member counts, membership rules (only org members; 422 otherwise)."""

from __future__ import annotations

from tests.services.orgs.conftest import Api


async def test_team_crud_with_counts_events_and_tags(api: Api) -> None:
    owner, admin, member = await api.user(), await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, admin, "admin")
    await api.join(org_id, member)
    base = f"/api/v1/orgs/{org_id}/teams"
    status, team, _ = await api.call("POST", base, admin, {"name": "  Core  "})
    assert status == 201
    assert (team["name"], team["member_count"], team["org_id"]) == ("Core", 0, org_id)
    assert set(team) == {"id", "org_id", "name", "member_count", "created_at", "updated_at"}
    assert (await api.events("team.created")) == [
        {"type": "team.created", "org_id": org_id, "team_id": team["id"], "name": "Core"}
    ]
    _, other, _ = await api.call("POST", base, admin, {"name": "Other"})
    for user in (admin, member):
        status, _, _ = await api.call("PUT", f"{base}/{team['id']}/members/{user}", admin)
        assert status == 204
    # PUT is idempotent.
    status, _, _ = await api.call("PUT", f"{base}/{team['id']}/members/{member}", admin)
    assert status == 204
    status, listing, headers = await api.call("GET", base, member)
    assert status == 200
    assert [(t["name"], t["member_count"]) for t in listing["items"]] == [("Core", 2), ("Other", 0)]
    assert headers["Surrogate-Key"].split() == [
        f"org:{org_id}", f"team:{team['id']}", f"team:{other['id']}"
    ]  # fmt: skip
    status, body, headers = await api.call("GET", f"{base}/{team['id']}", member)
    assert (status, body["member_count"]) == (200, 2)
    assert headers["Surrogate-Key"] == f"org:{org_id} team:{team['id']}"
    _, members, _ = await api.call("GET", f"{base}/{team['id']}/members", member)
    assert [m["user_id"] for m in members["items"]] == [admin, member]
    status, body, _ = await api.call("PATCH", f"{base}/{team['id']}", admin, {"name": "Kernel"})
    assert (status, body["name"], body["member_count"]) == (200, "Kernel", 2)
    status, _, _ = await api.call("DELETE", f"{base}/{team['id']}/members/{admin}", admin)
    assert status == 204
    status, _, _ = await api.call("DELETE", f"{base}/{team['id']}/members/{admin}", admin)
    assert status == 204  # idempotent
    assert await api.db["team_members"].count_documents({"team_id": {"$exists": True}}) == 1
    status, _, _ = await api.call("DELETE", f"{base}/{team['id']}", admin)
    assert status == 204
    assert await api.db["team_members"].count_documents({}) == 0
    assert (await api.events("team.deleted")) == [
        {"type": "team.deleted", "org_id": org_id, "team_id": team["id"]}
    ]
    status, _, _ = await api.call("GET", f"{base}/{team['id']}", member)
    assert status == 404


async def test_duplicate_team_name_is_a_conflict(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    base = f"/api/v1/orgs/{org_id}/teams"
    await api.call("POST", base, owner, {"name": "Core"})
    _, other, _ = await api.call("POST", base, owner, {"name": "Other"})
    status, body, _ = await api.call("POST", base, owner, {"name": "Core"})
    assert (status, body["code"]) == (409, "CONFLICT")
    status, body, _ = await api.call("PATCH", f"{base}/{other['id']}", owner, {"name": "Core"})
    assert (status, body["code"]) == (409, "CONFLICT")
    assert await api.db["teams"].count_documents({"name": "Core"}) == 1


async def test_only_org_members_can_join_a_team(api: Api) -> None:
    owner, stranger = await api.user(), await api.user()
    org_id = await api.org(owner)
    _, team, _ = await api.call("POST", f"/api/v1/orgs/{org_id}/teams", owner, {"name": "Core"})
    status, body, _ = await api.call(
        "PUT", f"/api/v1/orgs/{org_id}/teams/{team['id']}/members/{stranger}", owner
    )
    assert (status, body["code"]) == (422, "VALIDATION_FAILED")
    assert body["errors"] == [{"field": "user_id", "message": "not a member of this org"}]
    assert await api.db["team_members"].count_documents({}) == 0


async def test_team_of_another_org_is_not_found(api: Api) -> None:
    owner = await api.user()
    org_a, org_b = await api.org(owner), await api.org(owner)
    _, team, _ = await api.call("POST", f"/api/v1/orgs/{org_b}/teams", owner, {"name": "B"})
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("DELETE", "", None),
        ("GET", "/members", None),
        ("PUT", f"/members/{owner}", None),
        ("DELETE", f"/members/{owner}", None),
    ):
        status, _, _ = await api.call(
            method, f"/api/v1/orgs/{org_a}/teams/{team['id']}{suffix}", owner, body
        )
        assert status == 404, (method, suffix)
    assert await api.db["teams"].count_documents({"name": "B"}) == 1
    assert await api.db["team_members"].count_documents({}) == 0


async def test_bad_team_names_are_refused(api: Api) -> None:
    owner = await api.user()
    org_id = await api.org(owner)
    for name in ("", "   ", "x" * 101, "tab\there", {"$gt": ""}, 42, None):
        status, body, _ = await api.call(
            "POST", f"/api/v1/orgs/{org_id}/teams", owner, {"name": name}
        )
        assert (status, body["code"]) == (422, "VALIDATION_FAILED"), name
    assert await api.db["teams"].count_documents({}) == 0
