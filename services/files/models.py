"""Beanie documents of the files service: file metadata and the local org-membership view."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from libs.common.timestamps import utcnow


class FileStatus(StrEnum):
    UPLOADING = "uploading"
    READY = "ready"


class FileRecord(Document):
    """One file. The record is written `uploading` before the first byte is stored, so a crash
    mid-upload leaves something the sweeper can find; it turns `ready` with the size and hash."""

    owner_id: str
    org_id: str | None = None
    name: str
    content_type: str
    size: int = 0
    sha256: str | None = None
    status: FileStatus = FileStatus.UPLOADING
    # A random id of our own, never derived from the client's file name.
    object_key: str
    created_at: datetime = Field(default_factory=utcnow)
    # Set by the thumbnail consumer for images (another random key in the same storage).
    thumbnail_key: str | None = None
    thumbnail_type: str | None = None

    class Settings:
        name = "files"
        indexes = [
            IndexModel([("object_key", ASCENDING)], unique=True),
            IndexModel([("owner_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)]),
            IndexModel([("org_id", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)]),
            IndexModel([("status", ASCENDING), ("created_at", ASCENDING)]),
            IndexModel([("thumbnail_key", ASCENDING)], sparse=True),
        ]


class OrgMembership(Document):
    """Who belongs to which org, as the orgs service's events told us (no calls to orgs).

    `active=False` is a tombstone for a removal, and `as_of` the time of the event that wrote the
    row: an event older than the row changes nothing, so redelivered or reordered events converge.
    """

    org_id: str
    user_id: str
    role: str
    active: bool = True
    as_of: datetime

    class Settings:
        name = "org_memberships"
        indexes = [
            IndexModel([("org_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
            IndexModel([("user_id", ASCENDING)]),
        ]
