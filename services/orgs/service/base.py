"""What every part of the org service shares: id parsing, membership lookups, the org lock and
retried transactions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from beanie import Document, PydanticObjectId
from bson import ObjectId
from pymongo.asynchronous.client_session import AsyncClientSession

from libs.common.errors import BadRequest, Conflict, NotFound
from libs.common.events import Outbox, Transaction
from libs.common.identity import Principal
from services.orgs.models import Invitation, Membership, Org, Team, TeamMember
from services.orgs.service.rules import Op, authorize

T = TypeVar("T")
D = TypeVar("D", bound=Document)
EmailFetcher = Callable[[str], Awaitable[str | None]]

_ATTEMPTS = 10


def oid(value: str, what: str = "org") -> PydanticObjectId:
    """A path id as an ObjectId; anything else names nothing, so it is a 404 (never a 422)."""
    if not ObjectId.is_valid(value):
        raise NotFound(f"no such {what}")
    return PydanticObjectId(value)


class ServiceBase:
    def __init__(
        self,
        outbox: Outbox,
        *,
        invitation_ttl: timedelta = timedelta(days=7),
        fetch_email: EmailFetcher | None = None,
    ) -> None:
        self.outbox = outbox
        self.invitation_ttl = invitation_ttl
        self.fetch_email = fetch_email

    async def atomic(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """`Outbox.atomic`: a transaction with the outbox, re-run on transient conflicts."""
        return await self.outbox.atomic(body, attempts=_ATTEMPTS)

    @staticmethod
    async def membership(
        org_id: PydanticObjectId | None, user_id: str, session: AsyncClientSession | None = None
    ) -> Membership | None:
        return await Membership.find_one({"org_id": org_id, "user_id": user_id}, session=session)

    async def require(
        self,
        caller: Principal,
        org_id: str,
        *ops: Op,
        session: AsyncClientSession | None = None,
    ) -> Membership:
        """The caller's membership in `org_id`, allowed to do `ops` (404 / 403 otherwise)."""
        return authorize(await self.membership(oid(org_id), caller.id, session), *ops)

    @staticmethod
    async def lock_org(org_id: PydanticObjectId, tx: Transaction) -> Org:
        """Write the org document first: concurrent membership changes of one org then conflict
        (WriteConflict) and are retried one after another instead of both passing a check."""
        raw = await Org.get_pymongo_collection().find_one_and_update(
            {"_id": org_id}, {"$inc": {"rev": 1}}, session=tx.session, return_document=True
        )
        if raw is None:
            raise NotFound("no such org")
        org: Org = Org.model_validate(raw)
        return org

    @staticmethod
    async def other_owner_exists(
        org_id: PydanticObjectId, user_id: str, session: AsyncClientSession
    ) -> bool:
        count = await Membership.find(
            {"org_id": org_id, "role": "owner", "user_id": {"$ne": user_id}}, session=session
        ).count()
        return count > 0

    async def require_other_owner(
        self, org_id: PydanticObjectId, user_id: str, session: AsyncClientSession
    ) -> None:
        """An org always keeps an owner: refuse (409) what would take away the last one."""
        if not await self.other_owner_exists(org_id, user_id, session):
            raise Conflict("an org must keep at least one owner")

    @staticmethod
    async def purge_org(org: Org, tx: Transaction) -> None:
        """Delete the org and everything in it; one `org.deleted` tells the other services."""
        org_id = org.id
        for model in (Membership, TeamMember, Team, Invitation):
            await model.get_pymongo_collection().delete_many({"org_id": org_id}, session=tx.session)
        await Org.get_pymongo_collection().delete_one({"_id": org_id}, session=tx.session)
        tx.emit("org.deleted", {"org_id": str(org_id), "slug": org.slug, "name": org.name})


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results and the `_id` to continue after (None on the last page)."""

    items: list[T]
    next_after: str | None


async def page_of(
    model: type[D], query: dict[str, Any], *, limit: int, after: str | None
) -> Page[D]:
    """Documents of `model` matching `query`, in `_id` order (creation order), after `after`."""
    rows = await model.find(page_filter(query, after)).sort("_id").limit(limit + 1).to_list()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, str(rows[-1].id) if more and rows else None)


def page_filter(base: dict[str, Any], after: str | None) -> dict[str, Any]:
    """`base` restricted to documents after the cursor's `_id` (ids are unique, so stable)."""
    if after is None:
        return base
    if not ObjectId.is_valid(after):
        raise BadRequest("invalid cursor")
    return {**base, "_id": {"$gt": ObjectId(after)}}
