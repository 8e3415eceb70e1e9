"""The event envelope of the contract: `{id, type, occurred_at, source, request_id, data}`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["EVENT_TYPES", "Event"]

EVENT_TYPES = frozenset(
    {
        "user.created", "user.updated", "user.deleted",
        "org.created", "org.updated", "org.deleted",
        "org.member_added", "org.member_removed", "org.member_role_changed",
        "team.created", "team.deleted",
        "file.uploaded", "file.deleted",
        "apikey.revoked", "apikey.updated", "session.revoked",
        "user.password_reset_requested", "org.invitation_created",
    }
)  # fmt: skip


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One fact that happened; `id` is also the AMQP `message_id` and the idempotency key."""

    id: str = Field(default_factory=_new_id)
    type: str
    occurred_at: datetime = Field(default_factory=_now)
    source: str
    request_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
