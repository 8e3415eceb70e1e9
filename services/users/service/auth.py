"""Accounts' credentials: register, login, refresh, logout, password change/reset, sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError

from libs.common.errors import Conflict, Forbidden, Unauthenticated
from libs.common.events import Outbox, Transaction
from libs.common.timestamps import utcnow
from services.users.models import RefreshToken, Session, User
from services.users.service.audit import Audit
from services.users.service.common import by_id, digest, new_secret, normalize_email
from services.users.service.context import Caller, RequestInfo
from services.users.service.guard import LoginGuard
from services.users.service.passwords import PasswordPolicy, Passwords
from services.users.service.revocation import Revocations
from services.users.service.sessions import require_user, revoke_sessions
from services.users.service.signing import KeyRing
from services.users.tokens import issue_access_token

__all__ = ["AuthService", "TokenPair", "TokenSettings", "create_user"]

# One message for every credential failure, whatever the cause (no user enumeration).
BAD_CREDENTIALS = "invalid email or password"
BAD_REFRESH = "invalid refresh token"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str
    audience: str
    access_seconds: int
    refresh_seconds: int


async def create_user(
    *,
    outbox: Outbox,
    passwords: Passwords,
    policy: PasswordPolicy,
    email: str,
    password: str,
    display_name: str,
    info: RequestInfo,
    roles: tuple[str, ...] = ("user",),
) -> User:
    """Insert a user (and `user.created`); shared by registration and the admin CLI."""
    email = normalize_email(email)
    policy.check(password, email=email)
    if await User.find_one({"email": email}) is not None:
        raise Conflict("an account with this email already exists")
    name = display_name.strip()
    user = User(
        email=email,
        display_name=name,
        display_name_lower=name.lower(),
        password_hash=await passwords.hash(password),
        roles=list(roles),
    )

    async def create(tx: Transaction) -> None:
        user.id = None  # a retried attempt inserts afresh
        await user.insert(session=tx.session)
        tx.emit(
            "user.created",
            {
                "user_id": str(user.id),
                "email": email,
                "display_name": name,
                "roles": user.roles,
            },
        )

    try:
        # Concurrent registrations can conflict on the indexes: run it again.
        await outbox.atomic(create, request_id=info.request_id)
    except DuplicateKeyError:
        # Two registrations raced past the check above; the unique index decides.
        raise Conflict("an account with this email already exists") from None
    return user


class AuthService:
    def __init__(
        self,
        *,
        outbox: Outbox,
        passwords: Passwords,
        policy: PasswordPolicy,
        keys: KeyRing,
        revocations: Revocations,
        guard: LoginGuard,
        audit: Audit,
        tokens: TokenSettings,
    ) -> None:
        self.outbox = outbox
        self.passwords = passwords
        self.policy = policy
        self.keys = keys
        self.revocations = revocations
        self.guard = guard
        self.audit = audit
        self.tokens = tokens

    # -- accounts -------------------------------------------------------------------------

    async def register(
        self, *, email: str, password: str, display_name: str, info: RequestInfo
    ) -> User:
        """Create an account; 409 when the email is taken, 422 when the password is refused."""
        return await create_user(
            outbox=self.outbox,
            passwords=self.passwords,
            policy=self.policy,
            email=email,
            password=password,
            display_name=display_name,
            info=info,
        )

    # -- tokens ---------------------------------------------------------------------------

    async def _issue(self, user: User, session_id: str) -> tuple[str, int]:
        kid, private_key = await self.keys.signer()
        token, _ = issue_access_token(
            private_key=private_key,
            kid=kid,
            issuer=self.tokens.issuer,
            audience=self.tokens.audience,
            subject=str(user.id),
            session_id=session_id,
            roles=user.roles,
            lifetime=self.tokens.access_seconds,
        )
        return token, self.tokens.access_seconds

    async def _new_refresh(
        self,
        *,
        user_id: str,
        session_id: str,
        expires_at: datetime,
        session: AsyncClientSession | None = None,
    ) -> str:
        token = new_secret(32)
        await RefreshToken(
            token_hash=digest(token), session_id=session_id, user_id=user_id, expires_at=expires_at
        ).insert(session=session)
        return token

    async def login(self, *, email: str, password: str, info: RequestInfo) -> TokenPair:
        """A new session and its token pair; 401 on bad credentials, 423 while locked."""
        await self.guard.throttle_ip(info.ip)
        email = normalize_email(email)
        await self.guard.check_locked(email)
        user = await User.find_one({"email": email})
        if user is None:
            # Same cost as a real check so response time does not reveal unknown emails.
            await self.passwords.dummy_verify(password)
            ok = False
        else:
            ok = await self.passwords.verify(user.password_hash, password)
        if not ok:
            user_id = str(user.id) if user is not None else None
            locked = await self.guard.record_failure(email)
            await self.audit.record("login.failed", info=info, user_id=user_id)
            if locked:
                await self.audit.record(
                    "account.locked", info=info, user_id=user_id, seconds=locked
                )
                raise self.guard.locked(locked)
            raise Unauthenticated(BAD_CREDENTIALS)
        assert user is not None
        await self.guard.reset(email)
        if user.disabled:
            await self.audit.record("login.refused_disabled", info=info, user_id=str(user.id))
            raise Forbidden("this account is disabled")
        if self.passwords.needs_rehash(user.password_hash):
            # The parameters changed since this hash was made: rehash with the new ones.
            new_hash = await self.passwords.hash(password)
            await User.get_pymongo_collection().update_one(
                {"_id": user.id}, {"$set": {"password_hash": new_hash}}
            )
        now = utcnow()
        expires = now + timedelta(seconds=self.tokens.refresh_seconds)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            session = Session(
                user_id=str(user.id),
                expires_at=expires,
                user_agent=(info.user_agent or None) and info.user_agent[:512],
                ip=info.ip,
            )
            await session.insert(session=tx.session)
            refresh = await self._new_refresh(
                user_id=str(user.id),
                session_id=str(session.id),
                expires_at=expires,
                session=tx.session,
            )
            await self.audit.record(
                "login.succeeded",
                info=info,
                user_id=str(user.id),
                session=tx.session,
                session_id=str(session.id),
            )
        access, expires_in = await self._issue(user, str(session.id))
        return TokenPair(access, refresh, expires_in, str(session.id))

    async def refresh(self, *, refresh_token: str, info: RequestInfo) -> TokenPair:
        """Spend a refresh token for a new pair; a spent one revokes its whole family (401)."""
        token_hash = digest(refresh_token)
        now = utcnow()
        # Atomic outside any transaction: of two concurrent uses, exactly one wins.
        spent = await RefreshToken.get_pymongo_collection().find_one_and_update(
            {"token_hash": token_hash, "spent_at": None},
            {"$set": {"spent_at": now}},
            return_document=ReturnDocument.BEFORE,
        )
        if spent is None:
            reused = await RefreshToken.find_one({"token_hash": token_hash})
            if reused is not None:
                await self._revoke_family(reused.user_id, reused.session_id, info=info)
            raise Unauthenticated(BAD_REFRESH)
        if spent["expires_at"] <= now:
            raise Unauthenticated(BAD_REFRESH)
        session = await by_id(Session, spent["session_id"])
        user = await by_id(User, spent["user_id"])
        if session is None or session.revoked_at is not None or session.expires_at <= now:
            raise Unauthenticated(BAD_REFRESH)
        if user is None or user.disabled:
            raise Unauthenticated(BAD_REFRESH)
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            refresh = await self._new_refresh(
                user_id=str(user.id),
                session_id=str(session.id),
                expires_at=session.expires_at,
                session=tx.session,
            )
            await Session.get_pymongo_collection().update_one(
                {"_id": session.id}, {"$set": {"last_used_at": now}}, session=tx.session
            )
        access, expires_in = await self._issue(user, str(session.id))
        return TokenPair(access, refresh, expires_in, str(session.id))

    async def _revoke_family(self, user_id: str, session_id: str, *, info: RequestInfo) -> None:
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            revoked = await revoke_sessions(tx, user_id=user_id, only=[session_id])
            await self.audit.record(
                "refresh.reused",
                info=info,
                user_id=user_id,
                session=tx.session,
                session_id=session_id,
            )
        await self.revocations.revoke_sessions(revoked)

    async def logout(self, *, caller: Caller, refresh_token: str | None, info: RequestInfo) -> None:
        """The calling access token and its session (plus the given refresh family) die now."""
        require_user(caller)
        families = [caller.session_id] if caller.session_id else []
        if refresh_token:
            owned = await RefreshToken.find_one({"token_hash": digest(refresh_token)})
            if owned is not None and owned.user_id == caller.id:
                families.append(owned.session_id)
        revoked: list[str] = []
        if families:
            async with self.outbox.transaction(request_id=info.request_id) as tx:
                revoked = await revoke_sessions(tx, user_id=caller.id, only=families)
        if caller.token_id:
            await self.revocations.revoke_token(caller.token_id, caller.token_exp)
        # Deny the sids even if Mongo already had them revoked: the Redis keys may have lapsed.
        await self.revocations.revoke_sessions(sorted(set(revoked) | set(families)))
