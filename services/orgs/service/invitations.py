"""Invitations: an admin invites an email with a role; the invited user accepts with the token.

The token (32 random bytes, URL-safe) is shown once and stored only as its SHA-256; it expires
(default 7 days) and works once. Re-inviting an email replaces its pending invitation.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from datetime import datetime

from pymongo.errors import DuplicateKeyError

from libs.common.errors import Conflict, Forbidden, Gone, NotFound
from libs.common.events import Transaction
from libs.common.identity import Principal
from libs.common.timestamps import format_timestamp, utcnow
from services.orgs.models import (
    Invitation,
    InvitationStatus,
    Membership,
    Role,
    UserEmail,
)
from services.orgs.service.base import Page, ServiceBase, oid, page_of
from services.orgs.service.rules import Op, authorize


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_email(email: str) -> str:
    return email.strip().lower()


class InvitationOps(ServiceBase):
    async def create_invitation(
        self, *, caller: Principal, org_id: str, email: str, role: Role
    ) -> tuple[Invitation, str]:
        """A new invitation and its token (admins; owners to invite owners)."""
        ops = (Op.INVITE, Op.INVITE_OWNER) if role == Role.OWNER else (Op.INVITE,)
        await self.require(caller, org_id, *ops)
        email = normalize_email(email)
        token = secrets.token_urlsafe(32)

        async def body(tx: Transaction) -> Invitation:
            org = await self.lock_org(oid(org_id), tx)
            authorize(await self.membership(org.id, caller.id, tx.session), *ops)
            known = await UserEmail.find_one({"email": email}, session=tx.session)
            if known is not None and await self.membership(org.id, known.id, tx.session):
                raise Conflict("this email belongs to a member of the org already")
            now = utcnow()
            # Re-inviting replaces the pending invitation: its token stops working.
            await Invitation.get_pymongo_collection().update_many(
                {"org_id": org.id, "email": email, "status": InvitationStatus.PENDING.value},
                {"$set": {"status": InvitationStatus.REPLACED.value}},
                session=tx.session,
            )
            invitation = Invitation(
                org_id=org.id,
                email=email,
                role=role,
                token_hash=hash_token(token),
                inviter_id=caller.id,
                created_at=now,
                expires_at=now + self.invitation_ttl,
            )
            await invitation.insert(session=tx.session)
            # Everything a mail sender needs; the token travels only in this event.
            tx.emit(
                "org.invitation_created",
                {
                    "org_id": org_id,
                    "org_name": org.name,
                    "org_slug": org.slug,
                    "invitation_id": str(invitation.id),
                    "inviter_id": caller.id,
                    "email": email,
                    "role": role.value,
                    "token": token,
                    "expires_at": format_timestamp(invitation.expires_at),
                },
            )
            return invitation

        return await self.atomic(body), token

    async def list_invitations(
        self, *, caller: Principal, org_id: str, limit: int, after: str | None
    ) -> Page[Invitation]:
        """The org's pending invitations (including expired, not yet accepted ones)."""
        me = await self.require(caller, org_id, Op.LIST_INVITATIONS)
        query = {"org_id": me.org_id, "status": InvitationStatus.PENDING.value}
        return await page_of(Invitation, query, limit=limit, after=after)

    async def revoke_invitation(
        self, *, caller: Principal, org_id: str, invitation_id: str
    ) -> None:
        """Revoke a pending invitation (admins); its token stops working at once."""
        me = await self.require(caller, org_id, Op.REVOKE_INVITATION)
        result = await Invitation.get_pymongo_collection().update_one(
            {
                "_id": oid(invitation_id, "invitation"),
                "org_id": me.org_id,
                "status": InvitationStatus.PENDING.value,
            },
            {"$set": {"status": InvitationStatus.REVOKED.value}},
        )
        if result.matched_count == 0:
            raise NotFound("no such invitation")

    async def email_of(self, user_id: str) -> str | None:
        """The user's email: the local view first, else the users service (then remembered)."""
        known = await UserEmail.get(user_id)
        if known is not None:
            return known.email
        if self.fetch_email is None:
            return None
        email = await self.fetch_email(user_id)
        if email is None:
            return None
        await self.remember_email(user_id=user_id, email=email)
        return normalize_email(email)

    @staticmethod
    async def remember_email(*, user_id: str, email: str, at: datetime | None = None) -> None:
        """Upsert the local view (from `user.created`/`user.updated` or a users lookup); a fact
        older than the one stored (events may arrive out of order) changes nothing."""
        at = at or utcnow()
        with contextlib.suppress(DuplicateKeyError):  # a newer fact is stored already
            await UserEmail.get_pymongo_collection().update_one(
                {"_id": user_id, "updated_at": {"$lte": at}},
                {"$set": {"email": normalize_email(email), "updated_at": at}},
                upsert=True,
            )

    async def accept_invitation(self, *, caller: Principal, token: str) -> Membership:
        """Join the org as the invitation says: the caller's email must be the invited one."""
        if not token or len(token) > 256:
            raise NotFound("no such invitation")
        invitation = await Invitation.find_one({"token_hash": hash_token(token)})
        if invitation is None:
            raise NotFound("no such invitation")
        if invitation.status != InvitationStatus.PENDING or _expired(invitation.expires_at):
            raise Gone("this invitation has expired or was already used")
        email = await self.email_of(caller.id)
        if email is None or email != invitation.email:
            raise Forbidden("this invitation was sent to a different email address")

        async def body(tx: Transaction) -> Membership:
            try:
                org = await self.lock_org(invitation.org_id, tx)
            except NotFound:
                raise Gone("this invitation is no longer valid") from None
            now = utcnow()
            taken = await Invitation.get_pymongo_collection().update_one(
                {
                    "_id": invitation.id,
                    "status": InvitationStatus.PENDING.value,
                    "expires_at": {"$gt": now},
                },
                {
                    "$set": {
                        "status": InvitationStatus.ACCEPTED.value,
                        "accepted_by": caller.id,
                        "accepted_at": now,
                    }
                },
                session=tx.session,
            )
            if taken.matched_count == 0:
                raise Gone("this invitation has expired or was already used")
            if await self.membership(org.id, caller.id, tx.session) is not None:
                raise Conflict("you are a member of this org already")
            membership = Membership(
                org_id=invitation.org_id, user_id=caller.id, role=invitation.role
            )
            await membership.insert(session=tx.session)
            tx.emit(
                "org.member_added",
                {
                    "org_id": str(invitation.org_id),
                    "user_id": caller.id,
                    "role": invitation.role.value,
                    "invitation_id": str(invitation.id),
                },
            )
            return membership

        try:
            return await self.atomic(body)
        except DuplicateKeyError:
            raise Conflict("you are a member of this org already") from None


def _expired(expires_at: datetime) -> bool:
    return expires_at <= utcnow()
