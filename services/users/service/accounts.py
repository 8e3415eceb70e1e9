"""Profiles, search, batch fetch, self-deletion and user administration."""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId

from libs.common.errors import Conflict, Forbidden, NotFound
from libs.common.events import Outbox, Transaction
from libs.common.timestamps import utcnow
from services.users.models import ApiKey, User
from services.users.service.audit import Audit
from services.users.service.common import by_id, object_id
from services.users.service.context import Caller, RequestInfo
from services.users.service.revocation import Revocations
from services.users.service.sessions import revoke_sessions

__all__ = ["Accounts"]

ROLES = ("user", "admin")


class Accounts:
    def __init__(self, *, outbox: Outbox, revocations: Revocations, audit: Audit) -> None:
        self.outbox = outbox
        self.revocations = revocations
        self.audit = audit

    async def get(self, user_id: str) -> User:
        """The user, or 404."""
        user = await by_id(User, user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def update_profile(
        self, *, caller: Caller, display_name: str | None, info: RequestInfo
    ) -> User:
        """Change the caller's own profile fields."""
        user = await self.get(caller.id)
        if display_name is None or display_name.strip() == user.display_name:
            return user
        user.display_name = display_name.strip()
        user.display_name_lower = user.display_name.lower()
        user.updated_at = utcnow()

        async def change(tx: Transaction) -> None:
            await User.get_pymongo_collection().update_one(
                {"_id": user.id},
                {
                    "$set": {
                        "display_name": user.display_name,
                        "display_name_lower": user.display_name_lower,
                        "updated_at": user.updated_at,
                    }
                },
                session=tx.session,
            )
            tx.emit("user.updated", {"user_id": str(user.id), "display_name": user.display_name})

        # A concurrent login (last-used stamps, rehash) can win the race: run it again.
        await self.outbox.atomic(change, request_id=info.request_id)
        return user

    async def delete(self, *, caller: Caller, info: RequestInfo) -> None:
        """Delete the caller's account: sessions, API keys and every token die with it."""
        user = await self.get(caller.id)
        user_id = str(user.id)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            await User.get_pymongo_collection().delete_one({"_id": user.id}, session=tx.session)
            revoked = await revoke_sessions(tx, user_id=user_id)
            keys = [
                k["_id"]
                async for k in ApiKey.get_pymongo_collection().find(
                    {"user_id": user_id, "revoked_at": None}, {"_id": 1}, session=tx.session
                )
            ]
            if keys:
                await ApiKey.get_pymongo_collection().update_many(
                    {"_id": {"$in": keys}}, {"$set": {"revoked_at": utcnow()}}, session=tx.session
                )
            for key_id in keys:
                tx.emit("apikey.revoked", {"key_id": str(key_id), "user_id": user_id})
            tx.emit("user.deleted", {"user_id": user_id})
            await self.audit.record("user.deleted", info=info, user_id=user_id, session=tx.session)
        await self.revocations.revoke_user(user_id)
        await self.revocations.revoke_sessions(revoked)
        for key_id in keys:
            await self.revocations.revoke_api_key(str(key_id))

    # -- lookups --------------------------------------------------------------------------

    @staticmethod
    def _page_query(after: str | None) -> dict[str, Any]:
        oid = object_id(after) if after else None
        return {"_id": {"$gt": oid}} if oid is not None else {}

    async def _page(
        self, query: dict[str, Any], *, limit: int, after: str | None
    ) -> tuple[list[User], str | None]:
        query = {**query, **self._page_query(after)}
        users = await User.find(query).sort("_id").limit(limit + 1).to_list()
        next_after = str(users[limit - 1].id) if len(users) > limit else None
        return users[:limit], next_after

    @staticmethod
    def _prefix_query(q: str | None) -> dict[str, Any]:
        if not q:
            return {}
        # Anchored, case-folded prefix regexes use the indexes on both fields.
        prefix = "^" + re.escape(q.strip().lower())
        return {"$or": [{"display_name_lower": {"$regex": prefix}}, {"email": {"$regex": prefix}}]}

    async def search(
        self, *, q: str | None, limit: int, after: str | None
    ) -> tuple[list[User], str | None]:
        """Users whose display name or email starts with `q`, in id order."""
        return await self._page(self._prefix_query(q), limit=limit, after=after)

    async def batch(self, ids: list[str]) -> list[User]:
        """The users with these ids, in request order; unknown ids are left out."""
        oids = [oid for oid in (object_id(i) for i in ids) if oid is not None]
        found = {str(u.id): u for u in await User.find({"_id": {"$in": oids}}).to_list()}
        seen: set[str] = set()
        out = []
        for user_id in ids:
            if user_id in found and user_id not in seen:
                seen.add(user_id)
                out.append(found[user_id])
        return out

    # -- administration -------------------------------------------------------------------

    async def admin_list(
        self,
        *,
        q: str | None,
        role: str | None,
        disabled: bool | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[User], str | None]:
        """Every user, filtered; admins only (checked by the caller of this method)."""
        query = self._prefix_query(q)
        if role is not None:
            query["roles"] = role
        if disabled is not None:
            query["disabled"] = disabled
        return await self._page(query, limit=limit, after=after)

    async def admin_update(
        self,
        *,
        caller: Caller,
        user_id: str,
        roles: list[str] | None,
        disabled: bool | None,
        info: RequestInfo,
    ) -> User:
        """Set roles and/or the disabled flag; a disabled or demoted user's tokens die."""
        if not caller.is_admin:
            raise Forbidden("administrators only")
        user = await self.get(user_id)
        new_roles = sorted(set(roles) | {"user"}, key=ROLES.index) if roles is not None else None
        if user_id == caller.id and (
            disabled or (new_roles is not None and "admin" not in new_roles)
        ):
            raise Conflict("administrators cannot disable or demote themselves")
        changes: dict[str, Any] = {}
        if new_roles is not None and new_roles != user.roles:
            changes["roles"] = new_roles
        if disabled is not None and disabled != user.disabled:
            changes["disabled"] = disabled
        if not changes:
            return user
        demoted = "roles" in changes and not set(user.roles) <= set(new_roles or [])
        kill_tokens = changes.get("disabled") is True or demoted
        changes["updated_at"] = utcnow()
        revoked: list[str] = []
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            await User.get_pymongo_collection().update_one(
                {"_id": ObjectId(user_id)}, {"$set": changes}, session=tx.session
            )
            if changes.get("disabled") is True:
                revoked = await revoke_sessions(tx, user_id=user_id)
            data = {
                "user_id": user_id,
                **{k: v for k, v in changes.items() if k in ("roles", "disabled")},
            }
            tx.emit("user.updated", data)
            if "roles" in changes:
                await self.audit.record(
                    "user.roles_changed",
                    info=info,
                    user_id=user_id,
                    actor_id=caller.id,
                    session=tx.session,
                    before=user.roles,
                    after=changes["roles"],
                )
            if "disabled" in changes:
                await self.audit.record(
                    "user.disabled" if disabled else "user.enabled",
                    info=info,
                    user_id=user_id,
                    actor_id=caller.id,
                    session=tx.session,
                )
        if kill_tokens:
            # Tokens carry roles: a demoted user must sign in again to get the reduced set.
            await self.revocations.revoke_user(user_id)
            await self.revocations.revoke_sessions(revoked)
        if "disabled" in changes:
            await self.revocations.revoke_api_key(user_id)  # gateways drop cached key lookups
        return await self.get(user_id)
