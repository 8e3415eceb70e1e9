"""Beanie documents of the orgs service and their indexes.

Ids are ObjectIds; other services see them as strings. Every document that belongs to an org
carries `org_id`, so deleting an org is one `delete_many` per collection.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from libs.common.timestamps import utcnow


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class InvitationStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    REPLACED = "replaced"


class Org(Document):
    name: str
    slug: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Bumped by every membership change: writing the org document first makes concurrent
    # membership transactions of one org conflict (WriteConflict), so they run one after another.
    rev: int = 0

    class Settings:
        name = "orgs"
        indexes = [IndexModel([("slug", ASCENDING)], unique=True, name="slug_unique")]


class Membership(Document):
    org_id: PydanticObjectId
    user_id: str
    role: Role
    joined_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "memberships"
        indexes = [
            IndexModel([("org_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
            IndexModel([("user_id", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("org_id", ASCENDING), ("role", ASCENDING), ("joined_at", ASCENDING)]),
        ]


class Team(Document):
    org_id: PydanticObjectId
    name: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "teams"
        indexes = [IndexModel([("org_id", ASCENDING), ("name", ASCENDING)], unique=True)]


class TeamMember(Document):
    org_id: PydanticObjectId
    team_id: PydanticObjectId
    user_id: str
    added_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "team_members"
        indexes = [
            IndexModel([("team_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
            IndexModel([("org_id", ASCENDING), ("user_id", ASCENDING)]),
        ]


class Invitation(Document):
    org_id: PydanticObjectId
    email: str
    role: Role
    token_hash: str  # SHA-256 of the token; the token itself is never stored
    inviter_id: str
    status: InvitationStatus = InvitationStatus.PENDING
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    accepted_by: str | None = None
    accepted_at: datetime | None = None

    class Settings:
        name = "invitations"
        indexes = [
            IndexModel([("token_hash", ASCENDING)], unique=True),
            # At most one pending invitation per (org, email): re-inviting replaces it.
            IndexModel(
                [("org_id", ASCENDING), ("email", ASCENDING)],
                unique=True,
                partialFilterExpression={"status": "pending"},
                name="one_pending_per_email",
            ),
        ]


class UserEmail(Document):
    """Local view of users' emails, fed by `user.created/updated/deleted` events."""

    id: str  # type: ignore[assignment]  # the user id
    email: str
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "user_emails"
        indexes = [IndexModel([("email", ASCENDING)])]


DOCUMENTS: list[type[Document]] = [Org, Membership, Team, TeamMember, Invitation, UserEmail]
