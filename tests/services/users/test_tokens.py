"""Access-token rules (the reusable verifier) and signing-key storage and rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from services.users.keys import KEYRING
from services.users.service.signing import SigningKeyError
from services.users.settings import Settings
from services.users.tokens import TokenError, issue_access_token, jwk_of, verify_access_token
from tests.services.users.conftest import Users

ISS, AUD = "portico", "portico-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def keypair() -> tuple[Ed25519PrivateKey, dict[str, Any]]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes_raw()
    return private, {"keys": [jwk_of("k1", raw)]}


def _token(private: Ed25519PrivateKey, **overrides: Any) -> str:
    token, _ = issue_access_token(
        private_key=private,
        kid=overrides.pop("kid", "k1"),
        issuer=overrides.pop("issuer", ISS),
        audience=overrides.pop("audience", AUD),
        subject="u1",
        session_id="s1",
        roles=["user"],
        lifetime=overrides.pop("lifetime", 900),
        **overrides,
    )
    return token


def _verify(token: str, jwks: dict[str, Any], **kwargs: Any) -> Any:
    return verify_access_token(token, jwks, issuer=ISS, audience=AUD, **kwargs)


def test_a_valid_token_verifies(keypair: Any) -> None:
    private, jwks = keypair
    claims = _verify(_token(private), jwks)
    assert (claims.sub, claims.sid, claims.roles) == ("u1", "s1", ("user",))
    assert claims.exp - claims.iat == 900


def test_tampered_payload_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    header, payload, signature = _token(private).split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    forged = ".".join([header, _b64(orjson.dumps(claims)), signature])
    with pytest.raises(TokenError) as caught:
        _verify(forged, jwks)
    assert caught.value.reason == "bad_signature"


def test_token_signed_by_another_key_is_rejected(keypair: Any) -> None:
    _, jwks = keypair
    with pytest.raises(TokenError, match="bad_signature"):
        _verify(_token(Ed25519PrivateKey.generate()), jwks)


def test_expired_token_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    old = _token(private, now=int(time.time()) - 1000)
    with pytest.raises(TokenError, match="expired"):
        _verify(old, jwks)
    with pytest.raises(TokenError, match="expired"):
        _verify(_token(private), jwks, now=time.time() + 901)
    _verify(_token(private), jwks, now=time.time() + 899)


def test_not_yet_valid_token_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    with pytest.raises(TokenError, match="not_yet_valid"):
        _verify(_token(private, now=int(time.time()) + 300), jwks)


@pytest.mark.parametrize(
    ("field", "reason"), [("audience", "wrong_audience"), ("issuer", "wrong_issuer")]
)
def test_wrong_audience_or_issuer_is_rejected(keypair: Any, field: str, reason: str) -> None:
    private, jwks = keypair
    with pytest.raises(TokenError, match=reason):
        _verify(_token(private, **{field: "someone-else"}), jwks)


def test_alg_none_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    payload = jwt.decode(_token(private), options={"verify_signature": False})
    header = _b64(orjson.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}))
    unsigned = f"{header}.{_b64(orjson.dumps(payload))}."
    with pytest.raises(TokenError, match="bad_algorithm"):
        _verify(unsigned, jwks)


def test_hs256_signed_with_the_public_key_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    payload = jwt.decode(_token(private), options={"verify_signature": False})
    # The classic confusion attack: HMAC keyed with the (public) verification key.
    public = jwks["keys"][0]["x"].encode()
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}))
    body = _b64(orjson.dumps(payload))
    mac = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError, match="bad_algorithm"):
        _verify(f"{header}.{body}.{_b64(mac)}", jwks)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000])
def test_garbage_is_rejected(keypair: Any, token: str) -> None:
    with pytest.raises(TokenError):
        _verify(token, keypair[1])


def test_unknown_kid_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    with pytest.raises(TokenError, match="unknown_kid"):
        _verify(_token(private, kid="k2"), jwks)


def test_token_missing_a_required_claim_is_rejected(keypair: Any) -> None:
    private, jwks = keypair
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISS, "aud": AUD, "sub": "u", "iat": now, "nbf": now, "exp": now + 60, "jti": "j"},
        private,
        algorithm="EdDSA",
        headers={"kid": "k1"},
    )
    with pytest.raises(TokenError, match="malformed"):
        _verify(token, jwks)


# -- signing keys in the service -----------------------------------------------------------


async def _jwks(users: Users) -> dict[str, Any]:
    document: dict[str, Any] = await (await users.client.get("/.well-known/jwks.json")).json()
    return document


async def test_signing_key_is_created_on_first_start_and_encrypted_at_rest(
    users: Users, db: Any, settings: Settings
) -> None:
    _, tokens = await users.signup()
    [doc] = [d async for d in db["signing_keys"].find({})]
    assert doc["status"] == "active"
    kid, private = await users.client.app[KEYRING].signer()
    assert kid == doc["kid"]
    raw_private = private.private_bytes_raw()
    assert raw_private not in doc["private_key_encrypted"]
    dump = orjson.dumps(doc, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))
    assert raw_private.hex().encode() not in dump
    claims = verify_access_token(
        tokens["access_token"], await _jwks(users), issuer=ISS, audience=AUD
    )
    assert claims.roles == ("user",)


async def test_a_restart_reuses_the_stored_key(
    users: Users, make_client: Any, settings: Settings, db: Any
) -> None:
    first = await _jwks(users)
    again = Users(await make_client(settings))
    assert await _jwks(again) == first
    assert await db["signing_keys"].count_documents({}) == 1


async def test_wrong_key_encryption_key_cannot_load_the_signing_key(
    users: Users, make_client: Any, make_settings: Any
) -> None:
    await _jwks(users)
    other = make_settings(key_encryption_key="another-secret-entirely-0123456789abcdef")
    with pytest.raises(SigningKeyError, match="KEY_ENCRYPTION_KEY"):
        await make_client(other)


async def test_rotation_keeps_old_tokens_verifying_until_they_expire(
    make_client: Any, make_settings: Any, db: Any
) -> None:
    users = Users(await make_client(make_settings(key_publish_seconds=0)))
    _, before = await users.signup("rot@example.com")
    keyring = users.client.app[KEYRING]
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    new_kid = await keyring.rotate()
    after = await users.login("rot@example.com")
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    jwks = await _jwks(users)
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    for token in (before, after):
        verify_access_token(token["access_token"], jwks, issuer=ISS, audience=AUD)
    old = await db["signing_keys"].find_one({"kid": old_kid})
    assert old["status"] == "retiring"
    # Once every token the old key signed has expired, it is retired and leaves the JWKS.
    await db["signing_keys"].update_one(
        {"kid": old_kid}, {"$set": {"retire_at": old["created_at"]}}
    )
    assert await keyring.retire_expired() == 1
    jwks = await _jwks(users)
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    with pytest.raises(TokenError, match="unknown_kid"):
        verify_access_token(before["access_token"], jwks, issuer=ISS, audience=AUD)


def test_production_refuses_the_default_key_encryption_key() -> None:
    secret = "p" * 40
    with pytest.raises(ValidationError, match="key_encryption_key"):
        Settings(environment="production", internal_secret=secret)
    ok = Settings(environment="production", internal_secret=secret, key_encryption_key="k" * 40)
    assert ok.key_encryption_key.get_secret_value() == "k" * 40
    assert "k" * 40 not in repr(ok)


async def test_a_rotated_in_key_is_published_before_it_signs(users: Users, db: Any) -> None:
    _, before = await users.signup("pre@example.com")
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    keyring = users.client.app[KEYRING]
    new_kid = await keyring.rotate()  # default: signs 70 s from now
    jwks = await _jwks(users)
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    during = await users.login("pre@example.com")
    assert jwt.get_unverified_header(during["access_token"])["kid"] == old_kid
    # Its activation time arrives: the new key signs, the old one still verifies.
    await db["signing_keys"].update_one(
        {"kid": new_kid}, {"$set": {"activate_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    await keyring.ensure_key()
    after = await users.login("pre@example.com")
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    jwks = await _jwks(users)
    for tokens in (before, during, after):
        verify_access_token(tokens["access_token"], jwks, issuer=ISS, audience=AUD)
