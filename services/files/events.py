"""Bus consumers of the files service: cascades and the local org-membership view.

Every handler is idempotent: deletes of what is already gone change nothing, and membership
rows only move forward in event time (see `FileService.apply_membership`).
"""

from __future__ import annotations

from aiohttp import web

from libs.common.events import Event
from libs.common.events.wiring import Consumers
from services.files.keys import FILES

__all__ = ["build_consumers"]


def build_consumers(app: web.Application) -> Consumers:
    """The handlers, reading the service from `app` when an event arrives (after start-up)."""
    consumers = Consumers("files")

    @consumers.on("user.deleted")
    async def on_user_deleted(event: Event) -> None:
        await app[FILES].delete_user_files(str(event.data["user_id"]))

    @consumers.on("file.uploaded")
    async def on_file_uploaded(event: Event) -> None:
        if app[FILES].settings.thumbnails:
            await app[FILES].make_thumbnail(str(event.data["file_id"]))

    @consumers.on("org.deleted")
    async def on_org_deleted(event: Event) -> None:
        await app[FILES].delete_org_files(str(event.data["org_id"]))

    @consumers.on("org.created")
    async def on_org_created(event: Event) -> None:
        # The creator is the org's first owner (org.member_added follows; either is enough).
        await app[FILES].apply_membership(
            org_id=str(event.data["org_id"]),
            user_id=str(event.data["user_id"]),
            role="owner",
            as_of=event.occurred_at,
        )

    @consumers.on("org.member_added", "org.member_role_changed")
    async def on_member_changed(event: Event) -> None:
        await app[FILES].apply_membership(
            org_id=str(event.data["org_id"]),
            user_id=str(event.data["user_id"]),
            role=str(event.data.get("role") or "member"),
            as_of=event.occurred_at,
        )

    @consumers.on("org.member_removed")
    async def on_member_removed(event: Event) -> None:
        await app[FILES].apply_membership(
            org_id=str(event.data["org_id"]),
            user_id=str(event.data["user_id"]),
            role=None,
            as_of=event.occurred_at,
        )

    return consumers
