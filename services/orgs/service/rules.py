"""Who may do what in an org: the one rule table, role x operation.

A caller who is not a member of the org gets 404 for everything (the org's existence is not
disclosed); a member whose role does not allow the operation gets 403.
"""

from __future__ import annotations

from enum import StrEnum

from libs.common.errors import Forbidden, NotFound
from services.orgs.models import Membership, Role


class Op(StrEnum):
    READ_ORG = "read_org"
    UPDATE_ORG = "update_org"
    DELETE_ORG = "delete_org"
    LIST_MEMBERS = "list_members"
    CHANGE_ROLE = "change_role"  # between member and admin
    MANAGE_OWNERS = "manage_owners"  # make an owner, or demote/remove an owner
    REMOVE_MEMBER = "remove_member"
    LEAVE = "leave"
    INVITE = "invite"  # as member or admin
    INVITE_OWNER = "invite_owner"
    LIST_INVITATIONS = "list_invitations"
    REVOKE_INVITATION = "revoke_invitation"
    CREATE_TEAM = "create_team"
    LIST_TEAMS = "list_teams"
    READ_TEAM = "read_team"
    UPDATE_TEAM = "update_team"
    DELETE_TEAM = "delete_team"
    MANAGE_TEAM_MEMBERS = "manage_team_members"


_ALL = frozenset(Role)
_ADMINS = frozenset({Role.OWNER, Role.ADMIN})
_OWNERS = frozenset({Role.OWNER})

RULES: dict[Op, frozenset[Role]] = {
    Op.READ_ORG: _ALL,
    Op.UPDATE_ORG: _ADMINS,
    Op.DELETE_ORG: _OWNERS,
    Op.LIST_MEMBERS: _ALL,
    Op.CHANGE_ROLE: _ADMINS,
    Op.MANAGE_OWNERS: _OWNERS,
    Op.REMOVE_MEMBER: _ADMINS,
    Op.LEAVE: _ALL,
    Op.INVITE: _ADMINS,
    Op.INVITE_OWNER: _OWNERS,
    Op.LIST_INVITATIONS: _ADMINS,
    Op.REVOKE_INVITATION: _ADMINS,
    Op.CREATE_TEAM: _ADMINS,
    Op.LIST_TEAMS: _ALL,
    Op.READ_TEAM: _ALL,
    Op.UPDATE_TEAM: _ADMINS,
    Op.DELETE_TEAM: _ADMINS,
    Op.MANAGE_TEAM_MEMBERS: _ADMINS,
}


def allowed(role: Role | None, op: Op) -> bool:
    """Whether `role` (None: not a member) may perform `op`."""
    return role is not None and role in RULES[op]


def authorize(membership: Membership | None, *ops: Op) -> Membership:
    """The caller's membership if it allows every op in `ops`; else NotFound / Forbidden."""
    if membership is None:
        raise NotFound("no such org")
    for op in ops:
        if not allowed(membership.role, op):
            raise Forbidden(f"your role in this org does not allow {op.value.replace('_', ' ')}")
    return membership
