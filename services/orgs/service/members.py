"""Members: list, change role, remove, leave, and the `user.deleted` cascade."""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId

from libs.common.errors import NotFound
from libs.common.events import Transaction
from libs.common.identity import Principal
from services.orgs.models import Membership, Role, TeamMember, UserEmail
from services.orgs.service.base import Page, ServiceBase, oid, page_of
from services.orgs.service.rules import Op, authorize


class MemberOps(ServiceBase):
    async def list_members(
        self, *, caller: Principal, org_id: str, limit: int, after: str | None
    ) -> Page[Membership]:
        """The org's members in the order they joined."""
        me = await self.require(caller, org_id, Op.LIST_MEMBERS)
        return await page_of(Membership, {"org_id": me.org_id}, limit=limit, after=after)

    async def change_role(
        self, *, caller: Principal, org_id: str, user_id: str, role: Role
    ) -> Membership:
        """Set a member's role; owners only make or unmake owners; the last owner stays."""
        await self.require(caller, org_id, Op.CHANGE_ROLE)

        async def body(tx: Transaction) -> Membership:
            org = await self.lock_org(oid(org_id), tx)
            me = authorize(await self.membership(org.id, caller.id, tx.session), Op.CHANGE_ROLE)
            target = await self.membership(org.id, user_id, tx.session)
            if target is None:
                raise NotFound("no such member")
            if Role.OWNER in (target.role, role):
                authorize(me, Op.MANAGE_OWNERS)
            if target.role == role:
                return target
            if target.role == Role.OWNER:
                await self.require_other_owner(target.org_id, user_id, tx.session)
            previous = target.role
            await Membership.get_pymongo_collection().update_one(
                {"_id": target.id}, {"$set": {"role": role.value}}, session=tx.session
            )
            tx.emit(
                "org.member_role_changed",
                {
                    "org_id": org_id,
                    "user_id": user_id,
                    "role": role.value,
                    "previous_role": previous.value,
                },
            )
            updated: Membership = target.model_copy(update={"role": role})
            return updated

        return await self.atomic(body)

    async def remove_member(self, *, caller: Principal, org_id: str, user_id: str) -> None:
        """Remove a member (admins; owners for owners) or leave (self); never the last owner."""
        leaving = user_id == caller.id
        await self.require(caller, org_id, Op.LEAVE if leaving else Op.REMOVE_MEMBER)

        async def body(tx: Transaction) -> None:
            org = await self.lock_org(oid(org_id), tx)
            me = authorize(
                await self.membership(org.id, caller.id, tx.session),
                Op.LEAVE if leaving else Op.REMOVE_MEMBER,
            )
            target = me if leaving else await self.membership(org.id, user_id, tx.session)
            if target is None:
                raise NotFound("no such member")
            if target.role == Role.OWNER:
                if not leaving:
                    authorize(me, Op.MANAGE_OWNERS)
                await self.require_other_owner(target.org_id, user_id, tx.session)
            await self._drop_membership(target, tx, reason="left" if leaving else "removed")

        await self.atomic(body)

    @staticmethod
    async def _drop_membership(membership: Membership, tx: Transaction, *, reason: str) -> None:
        """Delete a membership and the member's places in the org's teams."""
        await Membership.get_pymongo_collection().delete_one(
            {"_id": membership.id}, session=tx.session
        )
        await TeamMember.get_pymongo_collection().delete_many(
            {"org_id": membership.org_id, "user_id": membership.user_id}, session=tx.session
        )
        tx.emit(
            "org.member_removed",
            {
                "org_id": str(membership.org_id),
                "user_id": membership.user_id,
                "role": membership.role.value,
                "reason": reason,
            },
        )

    async def user_deleted(self, *, user_id: str) -> None:
        """Cascade of `user.deleted` (idempotent): leave every org; an org whose last owner
        this was gets a new owner (longest-standing admin, else longest-standing member); an
        org left without members is deleted."""
        memberships = await Membership.find({"user_id": user_id}).to_list()
        for membership in memberships:

            async def body(tx: Transaction, m: Membership = membership) -> None:
                await self._leave_for_deleted_user(m, tx)

            await self.atomic(body)
        await UserEmail.find({"_id": user_id}).delete()

    async def _leave_for_deleted_user(self, membership: Membership, tx: Transaction) -> None:
        org_id: PydanticObjectId = membership.org_id
        try:
            org = await self.lock_org(org_id, tx)
        except NotFound:
            return  # the org went away meanwhile; nothing of this user is left in it
        current = await self.membership(org_id, membership.user_id, tx.session)
        if current is None:
            return  # already processed (redelivered event)
        await self._drop_membership(current, tx, reason="user_deleted")
        session = tx.session
        if current.role == Role.OWNER and not await self.other_owner_exists(
            org_id, current.user_id, session
        ):
            successor = await self._longest_standing(org_id, Role.ADMIN, tx) or (
                await self._longest_standing(org_id, Role.MEMBER, tx)
            )
            if successor is not None:
                await Membership.get_pymongo_collection().update_one(
                    {"_id": successor.id}, {"$set": {"role": Role.OWNER.value}}, session=session
                )
                tx.emit(
                    "org.member_role_changed",
                    {
                        "org_id": str(org_id),
                        "user_id": successor.user_id,
                        "role": Role.OWNER.value,
                        "previous_role": successor.role.value,
                        "reason": "last_owner_deleted",
                    },
                )
        if await Membership.find({"org_id": org_id}, session=session).count() == 0:
            await self.purge_org(org, tx)

    @staticmethod
    async def _longest_standing(
        org_id: PydanticObjectId, role: Role, tx: Transaction
    ) -> Membership | None:
        query: dict[str, Any] = {"org_id": org_id, "role": role.value}
        return (
            await Membership.find(query, session=tx.session)
            .sort("+joined_at", "+_id")
            .first_or_none()
        )
