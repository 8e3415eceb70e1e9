"""The authorization rule table, exhaustively: every role (and a non-member) x every operation.

Each operation runs once per role against a fresh target in the same org. Expected outcomes are
written out here, not derived from the service's table, so a wrong rule fails this test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.services.orgs.conftest import Api


@dataclass
class World:
    api: Api
    org_id: str
    owner: str
    owner2: str
    admin: str
    member: str
    outsider: str
    team_id: str

    async def fresh_member(self, role: str = "member") -> str:
        user = await self.api.user()
        await self.api.join(self.org_id, user, role, by=self.owner)
        return user

    async def fresh_team(self) -> str:
        name = f"team-{await self.api.user()}"
        status, body, _ = await self.api.call(
            "POST", f"/api/v1/orgs/{self.org_id}/teams", self.owner, {"name": name}
        )
        assert status == 201, body
        return str(body["id"])

    async def fresh_invitation(self) -> str:
        email = f"inv-{await self.api.user()}@example.com"
        await self.api.invite(self.org_id, self.owner, email)
        row = await self.api.db["invitations"].find_one({"email": email})
        return str(row["_id"])


Request = tuple[str, str, Any]
Setup = Callable[[World, str], Awaitable[Request]]


def _org(w: World) -> str:
    return f"/api/v1/orgs/{w.org_id}"


async def read_org(w: World, me: str) -> Request:
    return "GET", _org(w), None


async def update_org(w: World, me: str) -> Request:
    return "PATCH", _org(w), {"name": "Renamed"}


async def delete_org(w: World, me: str) -> Request:
    return "DELETE", _org(w), None


async def list_members(w: World, me: str) -> Request:
    return "GET", f"{_org(w)}/members", None


async def promote_member_to_admin(w: World, me: str) -> Request:
    return "PATCH", f"{_org(w)}/members/{await w.fresh_member()}", {"role": "admin"}


async def demote_admin_to_member(w: World, me: str) -> Request:
    return "PATCH", f"{_org(w)}/members/{await w.fresh_member('admin')}", {"role": "member"}


async def make_owner(w: World, me: str) -> Request:
    return "PATCH", f"{_org(w)}/members/{await w.fresh_member()}", {"role": "owner"}


async def demote_owner(w: World, me: str) -> Request:
    return "PATCH", f"{_org(w)}/members/{await w.fresh_member('owner')}", {"role": "admin"}


async def remove_member(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/members/{await w.fresh_member()}", None


async def remove_admin(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/members/{await w.fresh_member('admin')}", None


async def remove_owner(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/members/{await w.fresh_member('owner')}", None


async def leave(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/members/{me}", None


async def invite_member(w: World, me: str) -> Request:
    return "POST", f"{_org(w)}/invitations", {"email": "new@example.com", "role": "member"}


async def invite_admin(w: World, me: str) -> Request:
    return "POST", f"{_org(w)}/invitations", {"email": "new@example.com", "role": "admin"}


async def invite_owner(w: World, me: str) -> Request:
    return "POST", f"{_org(w)}/invitations", {"email": "new@example.com", "role": "owner"}


async def list_invitations(w: World, me: str) -> Request:
    return "GET", f"{_org(w)}/invitations", None


async def revoke_invitation(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/invitations/{await w.fresh_invitation()}", None


async def create_team(w: World, me: str) -> Request:
    return "POST", f"{_org(w)}/teams", {"name": f"team of {me}"}


async def list_teams(w: World, me: str) -> Request:
    return "GET", f"{_org(w)}/teams", None


async def read_team(w: World, me: str) -> Request:
    return "GET", f"{_org(w)}/teams/{w.team_id}", None


async def update_team(w: World, me: str) -> Request:
    return "PATCH", f"{_org(w)}/teams/{w.team_id}", {"name": f"renamed by {me}"}


async def delete_team(w: World, me: str) -> Request:
    return "DELETE", f"{_org(w)}/teams/{await w.fresh_team()}", None


async def list_team_members(w: World, me: str) -> Request:
    return "GET", f"{_org(w)}/teams/{w.team_id}/members", None


async def add_team_member(w: World, me: str) -> Request:
    return "PUT", f"{_org(w)}/teams/{w.team_id}/members/{await w.fresh_member()}", None


async def remove_team_member(w: World, me: str) -> Request:
    user = await w.fresh_member()
    status, _, _ = await w.api.call("PUT", f"{_org(w)}/teams/{w.team_id}/members/{user}", w.owner)
    assert status == 204
    return "DELETE", f"{_org(w)}/teams/{w.team_id}/members/{user}", None


ALL, ADMINS, OWNERS = ("owner", "admin", "member"), ("owner", "admin"), ("owner",)

# operation -> (roles allowed, status on success)
MATRIX: dict[Setup, tuple[tuple[str, ...], int]] = {
    read_org: (ALL, 200),
    update_org: (ADMINS, 200),
    delete_org: (OWNERS, 204),
    list_members: (ALL, 200),
    promote_member_to_admin: (ADMINS, 200),
    demote_admin_to_member: (ADMINS, 200),
    make_owner: (OWNERS, 200),
    demote_owner: (OWNERS, 200),
    remove_member: (ADMINS, 204),
    remove_admin: (ADMINS, 204),
    remove_owner: (OWNERS, 204),
    leave: (ALL, 204),
    invite_member: (ADMINS, 201),
    invite_admin: (ADMINS, 201),
    invite_owner: (OWNERS, 201),
    list_invitations: (ADMINS, 200),
    revoke_invitation: (ADMINS, 204),
    create_team: (ADMINS, 201),
    list_teams: (ALL, 200),
    read_team: (ALL, 200),
    update_team: (ADMINS, 200),
    delete_team: (ADMINS, 204),
    list_team_members: (ALL, 200),
    add_team_member: (ADMINS, 204),
    remove_team_member: (ADMINS, 204),
}

# Non-members first and owners last: only a permitted call changes anything, and the owner's
# (e.g. deleting the org) is the last one made.
ROLE_ORDER = ("non-member", "member", "admin", "owner")


@pytest.fixture
async def world(api: Api) -> World:
    owner, owner2, admin, member, outsider = [await api.user() for _ in range(5)]
    org_id = await api.org(owner)
    await api.join(org_id, owner2, "owner", by=owner)
    await api.join(org_id, admin, "admin", by=owner)
    await api.join(org_id, member, "member", by=owner)
    await api.org(outsider)  # a real user with an org of their own
    status, team, _ = await api.call(
        "POST", f"/api/v1/orgs/{org_id}/teams", owner, {"name": "core"}
    )
    assert status == 201
    return World(api, org_id, owner, owner2, admin, member, outsider, team["id"])


@pytest.mark.parametrize("operation", list(MATRIX), ids=lambda op: op.__name__)
async def test_role_matrix(world: World, operation: Setup) -> None:
    allowed, success = MATRIX[operation]
    callers = {
        "non-member": world.outsider,
        "member": world.member,
        "admin": world.admin,
        "owner": world.owner,
    }
    outcomes: dict[str, int] = {}
    expected: dict[str, int] = {}
    for role in ROLE_ORDER:
        method, path, body = await operation(world, callers[role])
        status, answer, _ = await world.api.call(method, path, callers[role], body)
        outcomes[role] = status
        expected[role] = success if role in allowed else (404 if role == "non-member" else 403)
        if status >= 400:
            assert answer["code"] == {403: "FORBIDDEN", 404: "NOT_FOUND"}.get(status), answer
    assert outcomes == expected
