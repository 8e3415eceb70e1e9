"""The files service's rules: uploads with limits, access through the org-membership view,
signed URLs, cascades from bus events and the sweeper. No aiohttp here."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

import structlog
from beanie import PydanticObjectId
from bson import ObjectId
from bson.errors import InvalidId

from libs.common.errors import (
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    UnsupportedMediaType,
)
from libs.common.events import Outbox
from libs.common.events.handling import after_commit, handler_session
from libs.common.timestamps import utcnow
from services.files.content import content_disposition, resolve_type, sniff
from services.files.membership import ADMIN_ROLES, MembershipView
from services.files.metering import Meter, read_head
from services.files.models import FileRecord, FileStatus, OrgMembership
from services.files.settings import Settings
from services.files.storage import ObjectStorage
from services.files.thumbnails import THUMBNAIL_TYPES, ThumbnailError, render_thumbnail

_log = structlog.get_logger("portico.files")


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime


@dataclass
class SweepReport:
    orphan_blobs: int = 0
    stale_uploads: int = 0
    aborted_uploads: int = 0


def _object_id(file_id: str) -> PydanticObjectId:
    try:
        return PydanticObjectId(ObjectId(file_id))
    except (InvalidId, TypeError):
        raise NotFound("no such file") from None


class FileService:
    def __init__(self, *, settings: Settings, storage: ObjectStorage) -> None:
        self.settings = settings
        self.storage = storage
        self.members = MembershipView()
        self._outbox: Outbox | None = None

    def bind(self, outbox: Outbox) -> None:
        self._outbox = outbox

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("FileService.bind(outbox) was not called")
        return self._outbox

    # --- access -------------------------------------------------------------------------------

    async def require_member(self, org_id: str, user_id: str) -> OrgMembership:
        """The caller's membership; 404 (the org is not disclosed) when there is none."""
        found = await self.members.get(org_id, user_id)
        if found is None:
            raise NotFound("no such org")
        return found

    async def readable(self, file_id: str, user_id: str) -> FileRecord:
        """The file when `user_id` may read it; 404 otherwise (existence is not disclosed)."""
        record = await self._ready(file_id)
        if record.owner_id == user_id:
            return record
        if record.org_id and await self.members.get(record.org_id, user_id):
            return record
        raise NotFound("no such file")

    async def _ready(self, file_id: str) -> FileRecord:
        record = await FileRecord.get(_object_id(file_id))
        if record is None or record.status != FileStatus.READY:
            raise NotFound("no such file")
        return record

    # --- upload -------------------------------------------------------------------------------

    async def usage(self, owner_id: str) -> int:
        """Bytes stored by `owner_id` (personal and org files they uploaded)."""
        rows = await FileRecord.get_pymongo_collection().aggregate(
            [{"$match": {"owner_id": owner_id}}, {"$group": {"_id": None, "n": {"$sum": "$size"}}}]
        )
        async for row in rows:
            return int(row["n"])
        return 0

    async def check_upload(self, *, owner_id: str, org_id: str | None, expected: int | None) -> int:
        """Refuse early what can be refused before reading the body; returns remaining quota."""
        if org_id is not None:
            await self.require_member(org_id, owner_id)
        if expected is not None and expected > self.settings.max_upload_size:
            raise PayloadTooLarge(f"files are limited to {self.settings.max_upload_size} bytes")
        remaining = self.settings.user_quota_bytes - await self.usage(owner_id)
        if expected is not None and expected > remaining:
            raise QuotaExceeded("this upload would exceed your storage quota", status=413)
        return remaining

    async def upload(
        self,
        *,
        owner_id: str,
        org_id: str | None,
        name: str,
        declared_type: str | None,
        chunks: AsyncIterator[bytes],
        expected_size: int | None = None,
    ) -> FileRecord:
        """Stream `chunks` into storage while hashing and enforcing size, quota and type."""
        remaining = await self.check_upload(
            owner_id=owner_id, org_id=org_id, expected=expected_size
        )
        head, complete = await read_head(chunks)
        media_type = resolve_type(declared_type, sniff(head, complete=complete))
        if media_type is None or media_type not in self.settings.allowed_content_types:
            raise UnsupportedMediaType("this content type is not accepted")
        if len(head) > self.settings.max_upload_size:
            raise PayloadTooLarge(f"files are limited to {self.settings.max_upload_size} bytes")

        record = FileRecord(
            owner_id=owner_id,
            org_id=org_id,
            name=name,
            content_type=media_type,
            object_key=secrets.token_hex(16),
        )
        await record.insert()
        meter = Meter(
            head, chunks, max_size=self.settings.max_upload_size, remaining_quota=remaining
        )
        try:
            await self.storage.put(record.object_key, meter)
        except BaseException:
            await asyncio.shield(record.delete())
            raise
        try:
            async with self.outbox.transaction() as tx:
                record.size = meter.size
                record.sha256 = meter.sha256.hexdigest()
                record.status = FileStatus.READY
                result = await FileRecord.get_pymongo_collection().update_one(
                    {"_id": record.id, "status": FileStatus.UPLOADING.value},
                    {"$set": {"size": record.size, "sha256": record.sha256, "status": "ready"}},
                    session=tx.session,
                )
                if result.matched_count != 1:
                    # A cascade (user or org deleted) or the sweeper removed the record while
                    # the bytes were arriving: the upload no longer has anywhere to go.
                    raise Gone("the upload was cancelled")
                tx.emit("file.uploaded", _event_data(record))
        except BaseException:
            # The metadata did not commit: the blob must not outlive it.
            await asyncio.shield(self._discard(record))
            raise
        _log.info("file uploaded", file_id=str(record.id), size=record.size)
        return record

    async def _discard(self, record: FileRecord) -> None:
        try:
            await self.storage.delete(record.object_key)
            await record.delete()
        except Exception:  # the sweeper will finish the job
            _log.exception("cleanup after failed upload failed", file_id=str(record.id))

    # --- read ---------------------------------------------------------------------------------

    async def list_files(
        self, *, user_id: str, org_id: str | None, limit: int, before: str | None
    ) -> tuple[list[FileRecord], str | None]:
        """A page of the caller's own files, or of an org's files for its members."""
        query: dict[str, Any] = {"status": FileStatus.READY.value}
        if org_id is not None:
            await self.require_member(org_id, user_id)
            query["org_id"] = org_id
        else:
            query["owner_id"] = user_id
        if before is not None:
            query["_id"] = {"$lt": _object_id(before)}
        items = await FileRecord.find(query).sort("-_id").limit(limit + 1).to_list()
        next_before = str(items[limit - 1].id) if len(items) > limit else None
        return items[:limit], next_before

    async def signed_url(self, record: FileRecord, *, now: datetime | None = None) -> SignedUrl:
        """A short-lived download URL: presigned by S3 where configured, else HMAC-signed."""
        now = now or utcnow()
        ttl = self.settings.url_ttl_seconds
        expires_at = (now + timedelta(seconds=ttl)).replace(microsecond=0)
        if self.settings.s3_presign:
            presigned = await self.storage.presign(
                record.object_key,
                expires_in=ttl,
                content_disposition=content_disposition(record.name),
                content_type=record.content_type,
            )
            if presigned is not None:
                return SignedUrl(presigned, expires_at)
        expires = int(expires_at.timestamp())
        query = urlencode(
            {"expires": expires, "signature": self._signature(str(record.id), expires)}
        )
        base = self.settings.public_base_url.rstrip("/")
        return SignedUrl(f"{base}/api/v1/files/{record.id}/content?{query}", expires_at)

    def _signature(self, file_id: str, expires: int) -> str:
        key = self.settings.url_signing_secret.get_secret_value().encode()
        return hmac.new(key, f"{file_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    async def by_signature(
        self, file_id: str, *, expires: str, signature: str, now: datetime | None = None
    ) -> FileRecord:
        """The file a signed URL names; a tampered or expired signature is refused (403)."""
        now = now or utcnow()
        try:
            when = int(expires)
        except ValueError:
            raise Forbidden("this link is invalid or has expired") from None
        good = hmac.compare_digest(self._signature(file_id, when), signature)
        if not good or when < now.timestamp():
            raise Forbidden("this link is invalid or has expired")
        return await self._ready(file_id)

    # --- delete -------------------------------------------------------------------------------

    async def delete(self, file_id: str, *, user_id: str) -> None:
        """The uploader, or an owner/admin of the file's org, deletes it; readers get 403."""
        record = await self.readable(file_id, user_id)
        if record.owner_id != user_id:
            assert record.org_id is not None  # readable by a non-owner means an org file
            member = await self.members.get(record.org_id, user_id)
            if member is None or member.role not in ADMIN_ROLES:
                raise Forbidden("only the uploader or an org admin may delete this file")
        await self._remove(record, reason="deleted")

    async def _remove(self, record: FileRecord, *, reason: str) -> bool:
        """Metadata and event first (atomically), then the blob; a blob that survives a crash
        here is an orphan the sweeper removes."""
        async with self.outbox.transaction() as tx:
            result = await FileRecord.get_pymongo_collection().delete_one(
                {"_id": record.id}, session=tx.session
            )
            if result.deleted_count and record.status == FileStatus.READY:
                tx.emit("file.deleted", {**_event_data(record), "reason": reason})
        await after_commit(partial(self._delete_blobs, record))
        return bool(result.deleted_count)

    async def _delete_blobs(self, record: FileRecord) -> None:
        await self.storage.delete(record.object_key)
        if record.thumbnail_key:
            await self.storage.delete(record.thumbnail_key)

    # --- thumbnails ---------------------------------------------------------------------------

    async def make_thumbnail(self, file_id: str) -> bool:
        """`file.uploaded`: render and store a thumbnail of an image file (idempotent).

        False when there is nothing to do: not an image, too large, gone, or undecodable (a
        broken image is not retried: it will not decode better next time)."""
        record = await self._ready_or_none(file_id)
        if (
            record is None
            or record.content_type not in THUMBNAIL_TYPES
            or record.size > self.settings.thumbnail_max_source_bytes
        ):
            return False
        source = b"".join([chunk async for chunk in self.storage.get(record.object_key)])
        try:
            data, media_type = await asyncio.to_thread(
                render_thumbnail, source, self.settings.thumbnail_size
            )
        except ThumbnailError as exc:
            _log.info("no thumbnail", file_id=file_id, reason=str(exc))
            return False
        # Derived from the file's key, so a redelivered event overwrites instead of adding one.
        key = f"{record.object_key}-thumb"
        await self.storage.put(key, _single(data))
        result = await FileRecord.get_pymongo_collection().update_one(
            {"_id": record.id, "status": FileStatus.READY.value},
            {"$set": {"thumbnail_key": key, "thumbnail_type": media_type}},
            session=handler_session(),
        )
        if result.matched_count != 1:  # deleted while we rendered
            await after_commit(partial(self.storage.delete, key))
            return False
        return True

    async def thumbnail(self, file_id: str, user_id: str) -> tuple[FileRecord, bytes]:
        """The thumbnail of a file the user may read; 404 while there is none."""
        record = await self.readable(file_id, user_id)
        if not record.thumbnail_key:
            raise NotFound("this file has no thumbnail")
        data = b"".join([chunk async for chunk in self.storage.get(record.thumbnail_key)])
        return record, data

    async def _ready_or_none(self, file_id: str) -> FileRecord | None:
        try:
            return await self._ready(file_id)
        except NotFound:
            return None

    async def delete_user_files(self, user_id: str) -> int:
        """`user.deleted`: the user's personal files go; org files stay with their org."""
        count = 0
        async for record in FileRecord.find({"owner_id": user_id, "org_id": None}):
            count += await self._remove(record, reason="user_deleted")
        await self.members.drop_user(user_id)
        return count

    async def delete_org_files(self, org_id: str) -> int:
        """`org.deleted`: every file of the org, and the org's membership view."""
        count = 0
        async for record in FileRecord.find({"org_id": org_id}):
            count += await self._remove(record, reason="org_deleted")
        await self.members.drop_org(org_id)
        return count

    async def apply_membership(
        self, *, org_id: str, user_id: str, role: str | None, as_of: datetime
    ) -> None:
        """A membership event, applied to the local view."""
        await self.members.apply(org_id=org_id, user_id=user_id, role=role, as_of=as_of)

    # --- sweeper ------------------------------------------------------------------------------

    async def sweep(self, *, now: datetime | None = None) -> SweepReport:
        """Delete blobs no record points to and uploads stuck in `uploading`, both older than
        `stale_upload_seconds` (younger ones may be uploads in flight)."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=self.settings.stale_upload_seconds)
        report = SweepReport()
        async for record in FileRecord.find(
            {"status": FileStatus.UPLOADING.value, "created_at": {"$lt": cutoff}}
        ):
            await self.storage.delete(record.object_key)
            await record.delete()
            report.stale_uploads += 1
        async for item in self.storage.list():
            if item.modified_at.astimezone(UTC) >= cutoff:
                continue
            owner = {"$or": [{"object_key": item.key}, {"thumbnail_key": item.key}]}
            if await FileRecord.find_one(owner) is None:
                await self.storage.delete_listed(item)
                report.orphan_blobs += 1
        report.aborted_uploads = await self.storage.abort_stale_uploads(cutoff)
        if report.orphan_blobs or report.stale_uploads or report.aborted_uploads:
            _log.info("sweep", orphan_blobs=report.orphan_blobs, stale=report.stale_uploads)
        return report


def _event_data(record: FileRecord) -> dict[str, Any]:
    return {
        "file_id": str(record.id),
        "owner_id": record.owner_id,
        "user_id": record.owner_id,
        "org_id": record.org_id,
        "size": record.size,
        "content_type": record.content_type,
        "sha256": record.sha256,
        "name": record.name,
    }


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data
