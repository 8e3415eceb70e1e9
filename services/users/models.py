"""Beanie documents of the users service and their indexes.

Secrets are never stored in the clear: passwords as argon2id hashes, refresh tokens, reset tokens
and API keys as SHA-256 digests, signing keys' private halves AES-GCM encrypted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from libs.common.timestamps import utcnow


class User(Document):
    email: str  # normalized: stripped, lower-cased
    display_name: str
    display_name_lower: str  # prefix search
    password_hash: str
    roles: list[str] = Field(default_factory=lambda: ["user"])
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        indexes = [
            IndexModel([("email", ASCENDING)], unique=True),
            IndexModel([("display_name_lower", ASCENDING)]),
            IndexModel([("roles", ASCENDING)]),
        ]


class Session(Document):
    """One login: the refresh-token family. Its id is the `sid` claim."""

    user_id: str
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    user_agent: str | None = None
    ip: str | None = None
    revoked_at: datetime | None = None

    class Settings:
        name = "sessions"
        indexes = [IndexModel([("user_id", ASCENDING), ("revoked_at", ASCENDING)])]


class RefreshToken(Document):
    token_hash: str
    session_id: str
    user_id: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    spent_at: datetime | None = None

    class Settings:
        name = "refresh_tokens"
        indexes = [
            IndexModel([("token_hash", ASCENDING)], unique=True),
            IndexModel([("session_id", ASCENDING)]),
        ]


class PasswordReset(Document):
    token_hash: str
    user_id: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None

    class Settings:
        name = "password_resets"
        indexes = [
            IndexModel([("token_hash", ASCENDING)], unique=True),
            IndexModel([("user_id", ASCENDING)]),
        ]


class ApiKey(Document):
    user_id: str
    name: str
    prefix: str
    key_hash: str  # SHA-256 of the whole key; the plaintext exists only in the 201 response
    scopes: list[str] = Field(default_factory=list)
    tier: str = "free"
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    class Settings:
        name = "api_keys"
        indexes = [
            IndexModel([("prefix", ASCENDING)], unique=True),
            IndexModel([("user_id", ASCENDING), ("created_at", DESCENDING)]),
        ]


class SigningKey(Document):
    """An Ed25519 JWT signing key, published in the JWKS from creation.

    It signs from `activate_at` (the newest activated key signs) and, once a newer key has
    replaced it (`retiring`), verifies until `retire_at`, after which it is `retired`."""

    kid: str
    public_key: bytes  # raw 32 bytes
    private_key_encrypted: bytes  # AES-256-GCM: nonce (12) || ciphertext+tag, AAD = kid
    status: str = "active"  # active | retiring | retired
    created_at: datetime = Field(default_factory=utcnow)
    activate_at: datetime = Field(default_factory=utcnow)
    retire_at: datetime | None = None

    class Settings:
        name = "signing_keys"
        indexes = [
            IndexModel([("kid", ASCENDING)], unique=True),
            IndexModel([("status", ASCENDING), ("created_at", DESCENDING)]),
        ]


class AuditEntry(Document):
    action: str  # login.succeeded, login.failed, account.locked, password.changed, ...
    user_id: str | None = None
    actor_id: str | None = None
    ip: str | None = None
    request_id: str | None = None
    at: datetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)

    class Settings:
        name = "audit_log"
        indexes = [
            IndexModel([("user_id", ASCENDING), ("at", DESCENDING)]),
            IndexModel([("action", ASCENDING), ("at", DESCENDING)]),
        ]


MODELS: list[type[Document]] = [
    User,
    Session,
    RefreshToken,
    PasswordReset,
    ApiKey,
    SigningKey,
    AuditEntry,
]
