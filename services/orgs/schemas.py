"""Request and response models of the orgs service (also the source of its OpenAPI document).

Inputs forbid unknown fields, so a client cannot mass-assign `id`, `role` or timestamps, and take
only plain strings, so operator objects like `{"$gt": ""}` are a 422 before any query is built.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from libs.common.timestamps import Timestamp
from services.orgs.models import Invitation, Membership, Org, Role, Team, TeamMember

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,38}[a-z0-9]")
RESERVED_SLUGS = frozenset(
    {
        "about", "account", "accounts", "admin", "administrator", "api", "app", "apps", "assets",
        "auth", "billing", "blog", "dashboard", "docs", "explore", "files", "help", "home",
        "invitations", "login", "logout", "me", "new", "null", "org", "orgs", "portico",
        "register", "root", "security", "settings", "signin", "signup", "static", "status",
        "support", "system", "team", "teams", "undefined", "user", "users", "www",
    }
)  # fmt: skip


def _slug(value: str) -> str:
    if not SLUG_PATTERN.fullmatch(value):
        raise ValueError(
            "2-40 lowercase letters, digits or hyphens, not starting or ending with a hyphen"
        )
    if value in RESERVED_SLUGS:
        raise ValueError("this slug is reserved")
    return value


def _no_control_chars(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("control characters are not allowed")
    return value


Slug = Annotated[str, StringConstraints(strict=True, max_length=40), AfterValidator(_slug)]
Name = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_no_control_chars),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreate(_Input):
    name: Name
    slug: Slug


class OrgUpdate(_Input):
    name: Name | None = None
    slug: Slug | None = None


class MemberUpdate(_Input):
    role: Role


class InvitationCreate(_Input):
    email: EmailStr = Field(max_length=254)
    role: Role = Role.MEMBER


class TeamCreate(_Input):
    name: Name


class TeamUpdate(_Input):
    name: Name


class OrgPublic(BaseModel):
    id: str
    name: str
    slug: str
    created_at: Timestamp
    updated_at: Timestamp
    role: Role

    @classmethod
    def from_model(cls, org: Org, *, role: Role) -> OrgPublic:
        return cls(
            id=str(org.id),
            name=org.name,
            slug=org.slug,
            created_at=org.created_at,
            updated_at=org.updated_at,
            role=role,
        )


class MemberPublic(BaseModel):
    user_id: str
    role: Role
    joined_at: Timestamp

    @classmethod
    def from_model(cls, membership: Membership) -> MemberPublic:
        return cls(user_id=membership.user_id, role=membership.role, joined_at=membership.joined_at)


class MembershipPublic(MemberPublic):
    org_id: str

    @classmethod
    def from_model(cls, membership: Membership) -> MembershipPublic:
        return cls(
            org_id=str(membership.org_id),
            user_id=membership.user_id,
            role=membership.role,
            joined_at=membership.joined_at,
        )


class InvitationPublic(BaseModel):
    id: str
    org_id: str
    email: str
    role: Role
    inviter_id: str
    created_at: Timestamp
    expires_at: Timestamp
    status: Literal["pending", "expired"]

    @classmethod
    def from_model(cls, invitation: Invitation, *, now: datetime) -> InvitationPublic:
        return cls(
            id=str(invitation.id),
            org_id=str(invitation.org_id),
            email=invitation.email,
            role=invitation.role,
            inviter_id=invitation.inviter_id,
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
            status="pending" if invitation.expires_at > now else "expired",
        )


class InvitationCreated(BaseModel):
    """Returned once, at creation: the only time the token is shown."""

    id: str
    org_id: str
    email: str
    role: Role
    token: str
    created_at: Timestamp
    expires_at: Timestamp


class TeamPublic(BaseModel):
    id: str
    org_id: str
    name: str
    member_count: int
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def from_model(cls, team: Team, *, member_count: int) -> TeamPublic:
        return cls(
            id=str(team.id),
            org_id=str(team.org_id),
            name=team.name,
            member_count=member_count,
            created_at=team.created_at,
            updated_at=team.updated_at,
        )


class TeamMemberPublic(BaseModel):
    user_id: str
    added_at: Timestamp

    @classmethod
    def from_model(cls, member: TeamMember) -> TeamMemberPublic:
        return cls(user_id=member.user_id, added_at=member.added_at)


class OrgsPage(BaseModel):
    items: list[OrgPublic]
    next_cursor: str | None


class MembersPage(BaseModel):
    items: list[MemberPublic]
    next_cursor: str | None


class InvitationsPage(BaseModel):
    items: list[InvitationPublic]
    next_cursor: str | None


class TeamsPage(BaseModel):
    items: list[TeamPublic]
    next_cursor: str | None


class TeamMembersPage(BaseModel):
    items: list[TeamMemberPublic]
    next_cursor: str | None
