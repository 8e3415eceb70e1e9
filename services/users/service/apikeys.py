"""API keys: `pk_<prefix>_<secret>`, shown once, stored as a SHA-256 digest, scoped and tiered."""

from __future__ import annotations

import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import timedelta

from pymongo.errors import DuplicateKeyError

from libs.common.errors import Forbidden, NotFound
from libs.common.events import Outbox
from libs.common.timestamps import utcnow
from services.users.models import ApiKey, User
from services.users.service.audit import Audit
from services.users.service.common import by_id, digest
from services.users.service.context import Caller, RequestInfo
from services.users.service.revocation import Revocations

__all__ = ["ApiKeys", "Resolved", "new_api_key", "split_api_key"]

_ALPHABET = string.ascii_letters + string.digits
PREFIX_LENGTH = 8
SECRET_BYTES = 32
SECRET_LENGTH = 43  # ceil(256 / log2(62)): 32 random bytes in base62
_LAST_USED_GRANULARITY = timedelta(seconds=60)


def _base62(data: bytes, width: int) -> str:
    value = int.from_bytes(data, "big")
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_api_key() -> tuple[str, str]:
    """(prefix, full key). The secret part encodes 32 bytes from the OS CSPRNG."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = _base62(secrets.token_bytes(SECRET_BYTES), SECRET_LENGTH)
    return prefix, f"pk_{prefix}_{secret}"


def split_api_key(key: str) -> str | None:
    """The visible prefix of a well-formed key, else None."""
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != "pk" or len(parts[1]) != PREFIX_LENGTH:
        return None
    if len(parts[2]) != SECRET_LENGTH or not all(c in _ALPHABET for c in parts[1] + parts[2]):
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class Resolved:
    key_id: str
    user_id: str
    scopes: list[str]
    tier: str
    roles: list[str]


class ApiKeys:
    def __init__(self, *, outbox: Outbox, revocations: Revocations, audit: Audit) -> None:
        self.outbox = outbox
        self.revocations = revocations
        self.audit = audit

    async def create(
        self, *, caller: Caller, name: str, scopes: list[str], info: RequestInfo
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext (returned once, never stored)."""
        if caller.kind != "user":
            raise Forbidden("API keys cannot create API keys")
        for _ in range(3):  # an 8-char prefix collision is rare; retry with a fresh key
            prefix, key = new_api_key()
            doc = ApiKey(
                user_id=caller.id,
                name=name.strip(),
                prefix=prefix,
                key_hash=digest(key),
                scopes=sorted(set(scopes)),
            )
            try:
                async with self.outbox.transaction(request_id=info.request_id) as tx:
                    await doc.insert(session=tx.session)
                    await self.audit.record(
                        "apikey.created",
                        info=info,
                        user_id=caller.id,
                        session=tx.session,
                        key_id=str(doc.id),
                        prefix=prefix,
                    )
            except DuplicateKeyError:
                continue
            return doc, key
        raise RuntimeError("could not allocate a unique API key prefix")

    async def list(self, *, caller: Caller) -> list[ApiKey]:
        """The caller's live keys, newest first."""
        return (
            await ApiKey.find({"user_id": caller.id, "revoked_at": None})
            .sort("-created_at")
            .to_list()
        )

    async def revoke(self, *, caller: Caller, key_id: str, info: RequestInfo) -> None:
        """The key stops working at once; 404 for someone else's key."""
        doc = await by_id(ApiKey, key_id)
        if doc is None or doc.revoked_at is not None:
            raise NotFound("no such API key")
        if doc.user_id != caller.id and not caller.is_admin:
            raise NotFound("no such API key")
        async with self.outbox.transaction(request_id=info.request_id) as tx:
            await ApiKey.get_pymongo_collection().update_one(
                {"_id": doc.id}, {"$set": {"revoked_at": utcnow()}}, session=tx.session
            )
            tx.emit("apikey.revoked", {"key_id": key_id, "user_id": doc.user_id})
            await self.audit.record(
                "apikey.revoked",
                info=info,
                user_id=doc.user_id,
                actor_id=caller.id,
                session=tx.session,
                key_id=key_id,
            )
        await self.revocations.revoke_api_key(key_id)

    async def set_tier(
        self, *, caller: Caller, key_id: str, tier: str, info: RequestInfo
    ) -> ApiKey:
        """Admins move a key between tiers (`apikey.updated`)."""
        if not caller.is_admin:
            raise Forbidden("administrators only")
        doc = await by_id(ApiKey, key_id)
        if doc is None or doc.revoked_at is not None:
            raise NotFound("no such API key")
        if doc.tier != tier:
            async with self.outbox.transaction(request_id=info.request_id) as tx:
                await ApiKey.get_pymongo_collection().update_one(
                    {"_id": doc.id}, {"$set": {"tier": tier}}, session=tx.session
                )
                tx.emit("apikey.updated", {"key_id": key_id, "user_id": doc.user_id, "tier": tier})
                await self.audit.record(
                    "apikey.tier_changed",
                    info=info,
                    user_id=doc.user_id,
                    actor_id=caller.id,
                    session=tx.session,
                    key_id=key_id,
                    before=doc.tier,
                    after=tier,
                )
            doc.tier = tier
            await self.revocations.revoke_api_key(key_id)  # cached lookups carry the old tier
        return doc

    async def resolve(self, key: str) -> Resolved:
        """Who a presented key acts for; 404 for unknown, revoked or disabled-owner keys."""
        prefix = split_api_key(key)
        doc = await ApiKey.find_one({"prefix": prefix}) if prefix is not None else None
        # compare_digest: the prefix is public, the rest must match without a timing oracle.
        if doc is None or not hmac.compare_digest(doc.key_hash, digest(key)):
            raise NotFound("no such API key")
        if doc.revoked_at is not None:
            raise NotFound("no such API key")
        user = await by_id(User, doc.user_id)
        if user is None or user.disabled:
            raise NotFound("no such API key")
        now = utcnow()
        if doc.last_used_at is None or now - doc.last_used_at > _LAST_USED_GRANULARITY:
            # At most one write a minute per key: resolution is on the gateway's cache-miss path.
            await ApiKey.get_pymongo_collection().update_one(
                {"_id": doc.id}, {"$set": {"last_used_at": now}}
            )
        return Resolved(
            key_id=str(doc.id),
            user_id=doc.user_id,
            scopes=doc.scopes,
            tier=doc.tier,
            roles=user.roles,
        )
