"""Orgs: create, list, read, update, delete."""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from libs.common.errors import Conflict, NotFound
from libs.common.events import Transaction
from libs.common.identity import Principal
from libs.common.timestamps import utcnow
from services.orgs.models import Membership, Org, Role
from services.orgs.service.base import Page, ServiceBase, oid, page_of
from services.orgs.service.rules import Op, authorize


class OrgOps(ServiceBase):
    async def create_org(self, *, owner: Principal, name: str, slug: str) -> Org:
        """A new org with the caller as its owner; a taken slug is a 409."""

        async def body(tx: Transaction) -> Org:
            org = Org(name=name, slug=slug)
            await org.insert(session=tx.session)
            membership = Membership(org_id=org.id, user_id=owner.id, role=Role.OWNER)
            await membership.insert(session=tx.session)
            tx.emit(
                "org.created",
                {"org_id": str(org.id), "user_id": owner.id, "name": name, "slug": slug},
            )
            tx.emit(
                "org.member_added",
                {"org_id": str(org.id), "user_id": owner.id, "role": Role.OWNER.value},
            )
            return org

        try:
            return await self.atomic(body)
        except DuplicateKeyError:
            raise Conflict("this slug is taken") from None

    async def list_orgs(
        self, *, caller: Principal, limit: int, after: str | None
    ) -> Page[tuple[Org, Role]]:
        """The orgs the caller belongs to, in the order they joined them."""
        memberships = await page_of(Membership, {"user_id": caller.id}, limit=limit, after=after)
        org_ids = [m.org_id for m in memberships.items]
        orgs = {org.id: org for org in await Org.find({"_id": {"$in": org_ids}}).to_list()}
        items = [(orgs[m.org_id], m.role) for m in memberships.items if m.org_id in orgs]
        return Page(items, memberships.next_after)

    async def get_org(self, *, caller: Principal, org_id: str) -> tuple[Org, Role]:
        """The org and the caller's role in it (404 for non-members)."""
        membership = await self.require(caller, org_id, Op.READ_ORG)
        org = await Org.get(membership.org_id)
        if org is None:  # deleted between the two reads
            raise NotFound("no such org")
        return org, membership.role

    async def update_org(
        self, *, caller: Principal, org_id: str, name: str | None, slug: str | None
    ) -> tuple[Org, Role]:
        """Rename the org or change its slug (admins)."""
        await self.require(caller, org_id, Op.UPDATE_ORG)

        async def body(tx: Transaction) -> tuple[Org, Role]:
            org = await self.lock_org(oid(org_id), tx)
            me = authorize(await self.membership(org.id, caller.id, tx.session), Op.UPDATE_ORG)
            changes: dict[str, Any] = {}
            if name is not None and name != org.name:
                changes["name"] = name
            if slug is not None and slug != org.slug:
                changes["slug"] = slug
            if changes:
                changes["updated_at"] = utcnow()
                await Org.get_pymongo_collection().update_one(
                    {"_id": org.id}, {"$set": changes}, session=tx.session
                )
                org = org.model_copy(update=changes)
                tx.emit("org.updated", {"org_id": str(org.id), "name": org.name, "slug": org.slug})
            return org, me.role

        try:
            return await self.atomic(body)
        except DuplicateKeyError:
            raise Conflict("this slug is taken") from None

    async def delete_org(self, *, caller: Principal, org_id: str) -> None:
        """Delete the org with its memberships, teams and invitations (owners)."""
        await self.require(caller, org_id, Op.DELETE_ORG)

        async def body(tx: Transaction) -> None:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), Op.DELETE_ORG)
            await self.purge_org(org, tx)

        await self.atomic(body)
