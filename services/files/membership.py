"""The local view of who belongs to which org, kept current from the orgs service's events
(no synchronous call to orgs on any request path)."""

from __future__ import annotations

import contextlib
from datetime import datetime

from pymongo.errors import DuplicateKeyError

from libs.common.timestamps import utcnow
from services.files.models import OrgMembership

__all__ = ["ADMIN_ROLES", "MembershipView"]

ADMIN_ROLES = frozenset({"owner", "admin"})


class MembershipView:
    async def get(self, org_id: str, user_id: str) -> OrgMembership | None:
        """The user's active membership in `org_id`, or None."""
        return await OrgMembership.find_one({"org_id": org_id, "user_id": user_id, "active": True})

    async def apply(self, *, org_id: str, user_id: str, role: str | None, as_of: datetime) -> None:
        """Record the membership an event describes (role None = removed), unless a newer event
        already did: redelivery and reordering converge on the latest state."""
        update = {"role": role or "", "active": role is not None, "as_of": as_of}
        # When a newer event wrote the row, the filter misses, the upsert hits the unique index
        # and the newer state wins.
        with contextlib.suppress(DuplicateKeyError):
            await OrgMembership.get_pymongo_collection().update_one(
                {"org_id": org_id, "user_id": user_id, "as_of": {"$lte": as_of}},
                {"$set": update},
                upsert=True,
            )

    async def drop_user(self, user_id: str) -> None:
        await self._deactivate({"user_id": user_id})

    async def drop_org(self, org_id: str) -> None:
        await self._deactivate({"org_id": org_id})

    async def _deactivate(self, query: dict[str, str]) -> None:
        # `as_of` moves forward so a late "added" from before the deletion cannot revive a row.
        await OrgMembership.get_pymongo_collection().update_many(
            query, {"$set": {"active": False}, "$max": {"as_of": utcnow()}}
        )
