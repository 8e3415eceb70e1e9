"""The verified identity the gateway forwards to services, and how services check it.

The gateway authenticates the client (JWT or API key) and forwards a compact, short-lived,
HMAC-SHA256-signed assertion in `X-Portico-Identity`. Services verify the signature with the shared
internal secret, so a bare header from anyone else is worthless. Service-to-service calls use the
same header with `kind="service"`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import orjson

__all__ = [
    "IDENTITY_HEADER",
    "IdentityError",
    "Principal",
    "sign_identity",
    "verify_identity",
]

IDENTITY_HEADER = "X-Portico-Identity"
_VERSION = "v1"

PrincipalKind = Literal["user", "api_key", "service"]


class IdentityError(Exception):
    """The identity assertion is missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a signed-in user, an API key acting for its user, or a service."""

    id: str
    kind: PrincipalKind = "user"
    roles: tuple[str, ...] = ("user",)
    scopes: tuple[str, ...] = ()
    tier: str | None = None
    key_id: str | None = None
    session_id: str | None = None
    token_id: str | None = None
    token_exp: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def has_scope(self, scope: str) -> bool:
        """Users hold every scope; API keys only the ones they were created with."""
        return self.kind != "api_key" or scope in self.scopes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def sign_identity(principal: Principal, secret: str, *, ttl: int = 300) -> str:
    """An assertion of `principal` valid for `ttl` seconds."""
    payload = asdict(principal)
    payload["exp"] = int(time.time()) + ttl
    body = _b64(orjson.dumps(payload))
    mac = hmac.new(secret.encode(), f"{_VERSION}.{body}".encode(), hashlib.sha256).digest()
    return f"{_VERSION}.{body}.{_b64(mac)}"


def verify_identity(value: str, secret: str, *, now: float | None = None) -> Principal:
    """The principal asserted by `value`, or IdentityError."""
    try:
        version, body, mac = value.split(".")
    except ValueError:
        raise IdentityError("malformed identity") from None
    if version != _VERSION:
        raise IdentityError("unknown identity version")
    expected = hmac.new(secret.encode(), f"{version}.{body}".encode(), hashlib.sha256).digest()
    try:
        given = _unb64(mac)
        payload = orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError):
        raise IdentityError("malformed identity") from None
    if not hmac.compare_digest(expected, given):
        raise IdentityError("bad identity signature")
    if not isinstance(payload, dict) or payload.get("exp", 0) < (now or time.time()):
        raise IdentityError("identity expired")
    payload.pop("exp")
    try:
        payload["roles"] = tuple(payload.get("roles", ()))
        payload["scopes"] = tuple(payload.get("scopes", ()))
        return Principal(**payload)
    except TypeError:
        raise IdentityError("malformed identity") from None
