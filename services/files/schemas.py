"""Request/response models of the files service (also the source of its OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from libs.common.timestamps import Timestamp
from services.files.models import FileRecord


class FilePublic(BaseModel):
    id: str
    name: str
    size: int
    content_type: str
    sha256: str
    owner_id: str
    org_id: str | None
    created_at: Timestamp

    @classmethod
    def from_model(cls, record: FileRecord) -> FilePublic:
        return cls(
            id=str(record.id),
            name=record.name,
            size=record.size,
            content_type=record.content_type,
            sha256=record.sha256 or "",
            owner_id=record.owner_id,
            org_id=record.org_id,
            created_at=record.created_at,
        )


class FilesPage(BaseModel):
    items: list[FilePublic]
    next_cursor: str | None


class FileUrl(BaseModel):
    url: str
    expires_at: Timestamp


class FilesQuery(BaseModel):
    org_id: str | None = Field(None, min_length=1, max_length=64)
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


class UploadQuery(BaseModel):
    name: str | None = Field(None, max_length=4096)
    org_id: str | None = Field(None, min_length=1, max_length=64)


class SignedQuery(BaseModel):
    expires: str = Field(max_length=20)
    signature: str = Field(max_length=128)
