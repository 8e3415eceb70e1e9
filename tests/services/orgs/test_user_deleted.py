"""The `user.deleted` cascade: memberships go, a successor owner is promoted, empty orgs vanish.

The bus runtime delivers events to these handlers; here they are called directly, as it would.
"""

from __future__ import annotations

from datetime import timedelta

from bson import ObjectId

from libs.common.events import Event
from services.orgs.events import consumers_for, on_user_deleted, on_user_upserted
from services.orgs.keys import ORGS
from tests.services.orgs.conftest import Api, new_id


async def _delete_user(api: Api, user_id: str) -> None:
    event = Event(type="user.deleted", source="users", data={"user_id": user_id})
    await on_user_deleted(api.client.app[ORGS], event)


async def test_members_memberships_and_team_places_are_dropped(api: Api) -> None:
    owner, bob = await api.user(), await api.user()
    orgs = [await api.org(owner) for _ in range(2)]
    for org_id in orgs:
        await api.join(org_id, bob, "admin")
        _, team, _ = await api.call("POST", f"/api/v1/orgs/{org_id}/teams", owner, {"name": "t"})
        await api.call("PUT", f"/api/v1/orgs/{org_id}/teams/{team['id']}/members/{bob}", owner)
    await _delete_user(api, bob)
    for org_id in orgs:
        assert await api.roles(org_id) == {owner: "owner"}
    assert await api.db["team_members"].count_documents({}) == 0
    assert await api.db["user_emails"].count_documents({"_id": bob}) == 0
    removed = await api.events("org.member_removed")
    assert sorted(e["org_id"] for e in removed) == sorted(orgs)
    assert {(e["user_id"], e["role"], e["reason"]) for e in removed} == {
        (bob, "admin", "user_deleted")
    }
    assert await api.events("org.member_role_changed") == []


async def test_longest_standing_admin_succeeds_the_last_owner(api: Api) -> None:
    owner, early_member, admin1, admin2 = [await api.user() for _ in range(4)]
    org_id = await api.org(owner)
    await api.join(org_id, early_member)  # joined first, but admins come before members
    await api.join(org_id, admin1, "admin")
    await api.join(org_id, admin2, "admin")
    await _delete_user(api, owner)
    assert await api.roles(org_id) == {early_member: "member", admin1: "owner", admin2: "admin"}
    assert (await api.events("org.member_role_changed"))[-1] == {
        "type": "org.member_role_changed", "org_id": org_id, "user_id": admin1,
        "role": "owner", "previous_role": "admin", "reason": "last_owner_deleted",
    }  # fmt: skip


async def test_without_admins_the_longest_standing_member_succeeds(api: Api) -> None:
    owner, first, second = [await api.user() for _ in range(3)]
    org_id = await api.org(owner)
    await api.join(org_id, first)
    await api.join(org_id, second)
    await _delete_user(api, owner)
    assert await api.roles(org_id) == {first: "owner", second: "member"}


async def test_remaining_owner_means_no_promotion(api: Api) -> None:
    owner, owner2, admin = [await api.user() for _ in range(3)]
    org_id = await api.org(owner)
    await api.join(org_id, owner2, "owner")
    await api.join(org_id, admin, "admin")
    await _delete_user(api, owner)
    assert await api.roles(org_id) == {owner2: "owner", admin: "admin"}
    assert await api.events("org.member_role_changed") == []


async def test_org_left_without_members_is_deleted(api: Api) -> None:
    owner, other = await api.user(), await api.user()
    lonely = await api.org(owner, slug="lonely")
    shared = await api.org(owner)
    await api.join(shared, other)
    await api.call("POST", f"/api/v1/orgs/{lonely}/teams", owner, {"name": "t"})
    await api.invite(lonely, owner, "someone@example.com")
    await _delete_user(api, owner)
    assert await api.db["orgs"].count_documents({"slug": "lonely"}) == 0
    for collection in ("teams", "invitations", "memberships"):
        query = {"org_id": ObjectId(lonely)}
        assert await api.db[collection].count_documents(query) == 0, collection
    assert [e["org_id"] for e in await api.events("org.deleted")] == [lonely]
    assert await api.roles(shared) == {other: "owner"}


async def test_redelivered_event_changes_nothing(api: Api) -> None:
    owner, admin = await api.user(), await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, admin, "admin")
    await _delete_user(api, owner)
    events = await api.events()
    await _delete_user(api, owner)
    assert await api.events() == events
    assert await api.roles(org_id) == {admin: "owner"}


async def test_consumers_are_bound_to_the_user_events(api: Api) -> None:
    consumers = consumers_for(api.client.app)
    bindings = {key: handler for keys, handler in consumers.bindings for key in keys}
    assert consumers.queue == "orgs"
    assert set(bindings) == {"user.deleted", "user.created", "user.updated"}
    await bindings["user.created"](
        Event(type="user.created", source="users", data={"user_id": "u1", "email": "U1@x.io"})
    )
    assert await api.email("u1") == "u1@x.io"
    owner = await api.user()
    org_id = await api.org(owner)
    await api.join(org_id, "u1", "admin")
    await bindings["user.deleted"](
        Event(type="user.deleted", source="users", data={"user_id": owner})
    )
    assert await api.roles(org_id) == {"u1": "owner"}


async def test_email_view_ignores_older_events_arriving_late(api: Api) -> None:
    user_id = new_id()
    newer = Event(
        type="user.updated", source="users", data={"user_id": user_id, "email": "new@x.io"}
    )
    older = Event(
        type="user.created",
        source="users",
        occurred_at=newer.occurred_at - timedelta(minutes=1),
        data={"user_id": user_id, "email": "old@x.io"},
    )
    await on_user_upserted(api.client.app[ORGS], newer)
    await on_user_upserted(api.client.app[ORGS], older)
    assert await api.email(user_id) == "new@x.io"
    await on_user_upserted(
        api.client.app[ORGS],
        newer.model_copy(
            update={
                "data": {"user_id": user_id, "email": "Newest@x.io"},
                "occurred_at": newer.occurred_at + timedelta(seconds=1),
            }
        ),
    )
    assert await api.email(user_id) == "newest@x.io"
