"""Sessions (refresh-token families): listing, revoking, and the revocation every flow shares."""

from __future__ import annotations

from libs.common.errors import Forbidden, NotFound
from libs.common.events import Outbox, Transaction
from libs.common.timestamps import utcnow
from services.users.models import Session
from services.users.service.common import by_id, object_id
from services.users.service.context import Caller, RequestInfo
from services.users.service.revocation import Revocations

__all__ = ["Sessions", "require_user", "revoke_sessions"]


def require_user(caller: Caller) -> None:
    """Session and credential operations belong to signed-in users, not API keys or services."""
    if caller.kind != "user":
        raise Forbidden("this operation needs a signed-in user, not an API key")


async def revoke_sessions(
    tx: Transaction,
    *,
    user_id: str,
    only: list[str] | None = None,
    keep: str | None = None,
) -> list[str]:
    """Mark the user's live sessions revoked (all, `only` these, or all but `keep`) inside
    `tx`, emitting `session.revoked` for each; returns their ids for the Redis denylist."""
    query: dict[str, object] = {"user_id": user_id, "revoked_at": None}
    ids = [oid for oid in (object_id(s) for s in only or []) if oid is not None]
    if only is not None:
        query["_id"] = {"$in": ids}
    elif keep is not None and (keep_id := object_id(keep)) is not None:
        query["_id"] = {"$ne": keep_id}
    collection = Session.get_pymongo_collection()
    found = [doc["_id"] async for doc in collection.find(query, {"_id": 1}, session=tx.session)]
    if not found:
        return []
    await collection.update_many(
        {"_id": {"$in": found}, "revoked_at": None},
        {"$set": {"revoked_at": utcnow()}},
        session=tx.session,
    )
    for sid in found:
        tx.emit("session.revoked", {"user_id": user_id, "session_id": str(sid)})
    return [str(sid) for sid in found]


class Sessions:
    def __init__(self, *, outbox: Outbox, revocations: Revocations) -> None:
        self.outbox = outbox
        self.revocations = revocations

    async def list(self, *, caller: Caller) -> list[Session]:
        """The caller's live sessions, newest first."""
        return (
            await Session.find(
                {"user_id": caller.id, "revoked_at": None, "expires_at": {"$gt": utcnow()}}
            )
            .sort("-created_at")
            .to_list()
        )

    async def revoke(self, *, caller: Caller, session_id: str, info: RequestInfo) -> None:
        """Revoke one of the caller's sessions; 404 for anyone else's."""
        require_user(caller)
        session = await by_id(Session, session_id)
        if session is None or session.user_id != caller.id or session.revoked_at is not None:
            raise NotFound("no such session")
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            revoked = await revoke_sessions(tx, user_id=caller.id, only=[session_id])
        await self.revocations.revoke_sessions(revoked)
