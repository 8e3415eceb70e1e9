"""Passwords after sign-up: change (other sessions die) and reset by emailed token (all die)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from libs.common.errors import Gone, InvalidInput, Unauthenticated
from libs.common.events import Outbox
from libs.common.timestamps import format_timestamp, utcnow
from services.users.models import PasswordReset, User
from services.users.service.audit import Audit
from services.users.service.common import by_id, digest, new_secret, normalize_email
from services.users.service.context import Caller, RequestInfo
from services.users.service.guard import LoginGuard
from services.users.service.passwords import PasswordPolicy, Passwords
from services.users.service.revocation import Revocations
from services.users.service.sessions import require_user, revoke_sessions

__all__ = ["Credentials"]

_log = structlog.get_logger("portico.users.credentials")


class Credentials:
    def __init__(
        self,
        *,
        outbox: Outbox,
        passwords: Passwords,
        policy: PasswordPolicy,
        revocations: Revocations,
        guard: LoginGuard,
        audit: Audit,
        reset_seconds: int,
    ) -> None:
        self.outbox = outbox
        self.passwords = passwords
        self.policy = policy
        self.revocations = revocations
        self.guard = guard
        self.audit = audit
        self.reset_seconds = reset_seconds
        self._pending: set[asyncio.Task[None]] = set()

    async def change_password(
        self, *, caller: Caller, current_password: str, new_password: str, info: RequestInfo
    ) -> None:
        """Set a new password; every session but the caller's is revoked."""
        require_user(caller)
        user = await by_id(User, caller.id)
        if user is None or user.disabled:
            raise Unauthenticated()
        await self.guard.check_locked(user.email)
        if not await self.passwords.verify(user.password_hash, current_password):
            locked = await self.guard.record_failure(user.email)
            await self.audit.record("password.change_failed", info=info, user_id=caller.id)
            if locked:
                raise self.guard.locked(locked)
            raise InvalidInput(
                "the current password is incorrect",
                errors=[{"field": "current_password", "message": "incorrect"}],
            )
        self.policy.check(new_password, email=user.email, field="new_password")
        if new_password == current_password:
            raise InvalidInput(
                errors=[
                    {"field": "new_password", "message": "must differ from the current password"}
                ]
            )
        new_hash = await self.passwords.hash(new_password)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            await User.get_pymongo_collection().update_one(
                {"_id": user.id},
                {"$set": {"password_hash": new_hash, "updated_at": utcnow()}},
                session=tx.session,
            )
            revoked = await revoke_sessions(tx, user_id=caller.id, keep=caller.session_id)
            await self.audit.record(
                "password.changed",
                info=info,
                user_id=caller.id,
                session=tx.session,
                sessions_revoked=len(revoked),
            )
        await self.revocations.revoke_sessions(revoked)

    def request_password_reset(self, *, email: str, info: RequestInfo) -> None:
        """Start issuing a reset token for `email` and return at once.

        The work runs after the response, so answering takes the same time whether or not the
        account exists (no enumeration through timing)."""
        task = asyncio.create_task(self._issue_reset(normalize_email(email), info))
        self._pending.add(task)
        task.add_done_callback(self._reset_done)

    def _reset_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("password reset failed", error=type(task.exception()).__name__)

    async def drain(self, grace: float = 10.0) -> None:
        """Wait for the reset requests in flight (shutdown, tests); cancel what outlives it."""
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _issue_reset(self, email: str, info: RequestInfo) -> None:
        """Emit a single-use reset token for an active account; silently nothing otherwise."""
        user = await User.find_one({"email": email})
        if user is None or user.disabled:
            return
        token = new_secret(32)
        expires = utcnow() + timedelta(seconds=self.reset_seconds)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            await PasswordReset(
                token_hash=digest(token), user_id=str(user.id), expires_at=expires
            ).insert(session=tx.session)
            # The mail sender needs the plaintext token; only its digest is kept here.
            tx.emit(
                "user.password_reset_requested",
                {
                    "user_id": str(user.id),
                    "email": user.email,
                    "token": token,
                    "expires_at": format_timestamp(expires),
                },
            )
            await self.audit.record(
                "password.reset_requested", info=info, user_id=str(user.id), session=tx.session
            )

    async def confirm_password_reset(
        self, *, token: str, new_password: str, info: RequestInfo
    ) -> None:
        """Set the password from a reset token; every session and token of the user dies."""
        token_hash = digest(token)
        now = utcnow()
        reset = await PasswordReset.find_one({"token_hash": token_hash})
        if reset is None or reset.used_at is not None or reset.expires_at <= now:
            raise Gone("this reset token is invalid, used or expired")
        user = await by_id(User, reset.user_id)
        if user is None or user.disabled:
            raise Gone("this reset token is invalid, used or expired")
        # Check the policy before spending the token, so a refused password can be retried.
        self.policy.check(new_password, email=user.email, field="new_password")
        new_hash = await self.passwords.hash(new_password)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            spent = await PasswordReset.get_pymongo_collection().update_one(
                {"_id": reset.id, "used_at": None}, {"$set": {"used_at": now}}, session=tx.session
            )
            if spent.modified_count != 1:
                raise Gone("this reset token is invalid, used or expired")
            # Any other outstanding reset tokens of the user are void too.
            await PasswordReset.get_pymongo_collection().update_many(
                {"user_id": reset.user_id, "used_at": None},
                {"$set": {"used_at": now}},
                session=tx.session,
            )
            await User.get_pymongo_collection().update_one(
                {"_id": user.id},
                {"$set": {"password_hash": new_hash, "updated_at": now}},
                session=tx.session,
            )
            revoked = await revoke_sessions(tx, user_id=str(user.id))
            await self.audit.record(
                "password.reset",
                info=info,
                user_id=str(user.id),
                session=tx.session,
                sessions_revoked=len(revoked),
            )
        await self.guard.reset(user.email)
        await self.revocations.revoke_user(str(user.id))
        await self.revocations.revoke_sessions(revoked)
