"""JWT signing keys: Ed25519 pairs stored in MongoDB with the private half AES-GCM encrypted.

Rotation: a new key becomes `active` (it signs); the previous ones become `retiring` and keep
verifying (listed in the JWKS) until every token they signed has expired, then `retired`.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from libs.common.timestamps import utcnow
from services.users.models import SigningKey
from services.users.tokens import jwk_of

__all__ = ["KeyRing", "SigningKeyError", "derive_kek"]


class SigningKeyError(RuntimeError):
    """A stored signing key cannot be used (wrong key-encryption key, corrupted record)."""


_RAW = serialization.Encoding.Raw


def derive_kek(secret: str) -> bytes:
    """The 256-bit AES key derived from the configured key-encryption secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"portico-users-signing-keys")
    return hkdf.derive(secret.encode())


class KeyRing:
    """Creates, rotates, retires and loads the signing keys; caches the ones that may sign."""

    def __init__(
        self, *, kek: bytes, verify_seconds: int, publish_seconds: int, reload_seconds: float
    ) -> None:
        self.aead = AESGCM(kek)
        # A replaced key verifies for this long after it stopped signing.
        self.verify_seconds = verify_seconds
        self.publish_seconds = publish_seconds
        self.reload_seconds = reload_seconds
        # (activate_at, kid, private key), newest key first.
        self._signers: list[tuple[datetime, str, Ed25519PrivateKey]] = []
        self._loaded_at = 0.0

    def _encrypt(self, kid: str, private: Ed25519PrivateKey) -> bytes:
        raw = private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, raw, kid.encode())

    def _decrypt(self, doc: SigningKey) -> Ed25519PrivateKey:
        blob = doc.private_key_encrypted
        try:
            raw = self.aead.decrypt(blob[:12], blob[12:], doc.kid.encode())
        except InvalidTag:
            raise SigningKeyError(
                f"cannot decrypt signing key {doc.kid}: is PORTICO_USERS_KEY_ENCRYPTION_KEY the "
                "one it was created with?"
            ) from None
        return Ed25519PrivateKey.from_private_bytes(raw)

    async def _create(self, *, activate_at: datetime) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        kid = uuid.uuid4().hex[:16]
        doc = SigningKey(
            kid=kid,
            public_key=private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
            private_key_encrypted=self._encrypt(kid, private),
            activate_at=activate_at,
        )
        await doc.insert()
        return doc

    async def _load(self) -> None:
        docs = await SigningKey.find({"status": {"$in": ["active", "retiring"]}}).to_list()
        now = utcnow()
        live = [d for d in docs if d.retire_at is None or d.retire_at > now]
        # The most recently rotated-in key that has activated signs.
        live.sort(key=lambda d: d.created_at, reverse=True)
        self._signers = [(d.activate_at, d.kid, self._decrypt(d)) for d in live]
        self._loaded_at = time.monotonic()

    async def ensure_key(self) -> str:
        """The signing kid, creating the first key when there is none."""
        await self.retire_expired()
        if await SigningKey.find_one({"status": "active"}) is None:
            await self._create(activate_at=utcnow())
        await self._load()
        return (await self.signer())[0]

    async def rotate(self) -> str:
        """Publish a new key that signs after `publish_seconds`; the current ones keep signing
        until then and verify until their last token has expired. Returns the new kid."""
        activate_at = utcnow() + timedelta(seconds=self.publish_seconds)
        new = await self._create(activate_at=activate_at)
        retire_at = activate_at + timedelta(seconds=self.verify_seconds)
        await SigningKey.get_pymongo_collection().update_many(
            {"status": "active", "kid": {"$ne": new.kid}},
            {"$set": {"status": "retiring", "retire_at": retire_at}},
        )
        await self.retire_expired()
        await self._load()
        return new.kid

    async def retire_expired(self) -> int:
        """Retire the keys no live token can have been signed with; returns how many."""
        result = await SigningKey.get_pymongo_collection().update_many(
            {"status": "retiring", "retire_at": {"$lte": utcnow()}},
            {"$set": {"status": "retired"}},
        )
        return int(result.modified_count)

    async def signer(self) -> tuple[str, Ed25519PrivateKey]:
        """(kid, private key) of the newest key already active; keys are re-read periodically so a
        rotation made elsewhere (CLI, another instance) is known before it activates."""
        if not self._signers or time.monotonic() - self._loaded_at > self.reload_seconds:
            await self.retire_expired()
            await self._load()
        now = utcnow()
        for activate_at, kid, private in self._signers:
            if activate_at <= now:
                return kid, private
        # Only future keys (clock skew, or the old ones retired early): use the oldest pending.
        if not self._signers:
            raise SigningKeyError("no signing key is available")
        _, kid, private = self._signers[-1]
        return kid, private

    async def jwks(self) -> dict[str, list[dict[str, str]]]:
        """Every key that may verify a live token, including ones about to start signing."""
        now = utcnow()
        docs = (
            await SigningKey.find({"status": {"$in": ["active", "retiring"]}})
            .sort("-created_at")
            .to_list()
        )
        keys = [
            jwk_of(d.kid, d.public_key) for d in docs if d.retire_at is None or d.retire_at > now
        ]
        return {"keys": keys}
