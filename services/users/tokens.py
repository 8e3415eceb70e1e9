"""Access tokens: EdDSA (Ed25519) JWTs, their JWKS form, and a strict reusable verifier.

The verifier pins the algorithm to EdDSA and picks the key by `kid` from a JWKS: a token cannot
choose `none`, HS256 (with the public key as an HMAC secret) or an unknown key.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALGORITHM",
    "AccessClaims",
    "TokenError",
    "issue_access_token",
    "jwk_of",
    "verify_access_token",
]

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid"]


class TokenError(Exception):
    """The token is malformed, forged, expired or not meant for us; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    sid: str
    jti: str
    roles: tuple[str, ...]
    iat: int
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(kid: str, public_key: bytes) -> dict[str, str]:
    """The public JWK (RFC 8037 OKP) of a raw Ed25519 public key."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(public_key),
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
    }


def issue_access_token(
    *,
    private_key: Ed25519PrivateKey,
    kid: str,
    issuer: str,
    audience: str,
    subject: str,
    session_id: str,
    roles: Sequence[str],
    lifetime: int,
    now: int | None = None,
) -> tuple[str, AccessClaims]:
    """A signed access token and the claims it carries."""
    iat = int(time.time()) if now is None else now
    claims = AccessClaims(
        sub=subject,
        sid=session_id,
        jti=uuid.uuid4().hex,
        roles=tuple(roles),
        iat=iat,
        exp=iat + lifetime,
    )
    payload = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": iat,
        "nbf": iat,
        "exp": claims.exp,
        "jti": claims.jti,
        "sid": session_id,
        "roles": list(roles),
    }
    token = jwt.encode(payload, private_key, algorithm=ALGORITHM, headers={"kid": kid})
    return token, claims


def _public_keys(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in jwks.get("keys", []):
        if not isinstance(entry, Mapping) or entry.get("kty") != "OKP":
            continue
        if entry.get("crv") != "Ed25519" or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(dict(entry), algorithm=ALGORITHM).key
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue
        if isinstance(key, Ed25519PublicKey):
            keys[entry["kid"]] = key
    return keys


def verify_access_token(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    leeway: int = 0,
    now: float | None = None,
) -> AccessClaims:
    """The claims of a valid access token, or TokenError(reason)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:  # DecodeError, or a header PyJWT refuses (non-string kid)
        raise TokenError("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError("bad_algorithm")
    kid = header.get("kid")
    key = _public_keys(jwks).get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError("unknown_kid")
    options: Any = {"require": REQUIRED_CLAIMS}
    if now is not None:
        # PyJWT reads the clock itself; shift the leeway instead of patching time.
        options["verify_exp"] = False
        options["verify_nbf"] = False
        options["verify_iat"] = False
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options=options,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("not_yet_valid") from None
    except jwt.InvalidIssuerError:
        raise TokenError("wrong_issuer") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_audience") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature") from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed") from None
    if now is not None:
        if int(claims["exp"]) + leeway <= now:
            raise TokenError("expired")
        if int(claims["nbf"]) - leeway > now:
            raise TokenError("not_yet_valid")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError("malformed")
    return AccessClaims(
        sub=str(claims["sub"]),
        sid=str(claims["sid"]),
        jti=str(claims["jti"]),
        roles=tuple(roles),
        iat=int(claims["iat"]),
        exp=int(claims["exp"]),
    )
