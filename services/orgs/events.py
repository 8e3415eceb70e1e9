"""Consumers of bus events: each a small function calling the service. All are idempotent."""

from __future__ import annotations

from aiohttp import web

from libs.common.events import Event
from libs.common.events.wiring import Consumers
from services.orgs.keys import ORGS
from services.orgs.service import OrgService


async def on_user_deleted(service: OrgService, event: Event) -> None:
    """Drop the user's memberships; promote a successor owner; delete orgs left empty."""
    user_id = event.data.get("user_id")
    if isinstance(user_id, str) and user_id:
        await service.user_deleted(user_id=user_id)


async def on_user_upserted(service: OrgService, event: Event) -> None:
    """Keep the local `user_emails` view current (used to check who accepts an invitation)."""
    user_id, email = event.data.get("user_id"), event.data.get("email")
    if isinstance(user_id, str) and user_id and isinstance(email, str) and email:
        await service.remember_email(user_id=user_id, email=email, at=event.occurred_at)


def consumers_for(app: web.Application) -> Consumers:
    """The orgs queue's bindings; handlers look the service up when an event arrives."""
    consumers = Consumers("orgs")

    @consumers.on("user.deleted")
    async def user_deleted(event: Event) -> None:
        await on_user_deleted(app[ORGS], event)

    @consumers.on("user.created", "user.updated")
    async def user_upserted(event: Event) -> None:
        await on_user_upserted(app[ORGS], event)

    return consumers
