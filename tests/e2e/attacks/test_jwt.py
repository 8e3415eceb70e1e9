"""Forged, expired, mis-addressed and revoked access tokens never get past the gateway.

Tokens signed with the platform's real key (read from the stack's database: the worst case of a
leaked key is out of scope, but it lets each claim check be tested on its own) prove that it is
the claim check, not the signature, that rejects them; a correctly-claimed forged token is the
positive control that shows the harness can tell acceptance from rejection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import AsyncMongoClient

from services.users.service.signing import derive_kek
from services.users.settings import DEV_KEY_ENCRYPTION_KEY
from tests.e2e.attacks.conftest import User, assert_problem, client, new_user
from tests.e2e.stack import Stack


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


@pytest.fixture
async def victim(stack: Stack) -> User:
    return await new_user(stack, "Victim")


@pytest.fixture
async def jwks(stack: Stack) -> dict[str, Any]:
    async with client() as http, http.get(f"{stack.gateway}/.well-known/jwks.json") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json(content_type=None)
    assert body["keys"], body
    return body


@pytest.fixture
async def signing_key(stack: Stack) -> tuple[str, Ed25519PrivateKey]:
    """The users service's active signing key, decrypted as the service does."""
    assert stack.mongo is not None
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo.url)
    try:
        doc = await mongo["portico_users"]["signing_keys"].find_one(
            {"status": "active"}, sort=[("activate_at", -1)]
        )
    finally:
        await mongo.close()
    assert doc is not None
    blob = bytes(doc["private_key_encrypted"])
    raw = AESGCM(derive_kek(DEV_KEY_ENCRYPTION_KEY)).decrypt(
        blob[:12], blob[12:], doc["kid"].encode()
    )
    return doc["kid"], Ed25519PrivateKey.from_private_bytes(raw)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with client() as session:
        yield session


def claims_for(user: User, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "portico",
        "aud": "portico-api",
        "sub": user.id,
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
        "roles": ["user"],
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def signed(
    key: tuple[str, Ed25519PrivateKey], claims: dict[str, Any], kid: str | None = None
) -> str:
    return jwt.encode(claims, key[1], algorithm="EdDSA", headers={"kid": kid or key[0]})


async def me_status(
    http: aiohttp.ClientSession, stack: Stack, token: str
) -> aiohttp.ClientResponse:
    return await http.get(
        f"{stack.gateway}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
    )


async def assert_rejected(http: aiohttp.ClientSession, stack: Stack, token: str) -> None:
    async with await me_status(http, stack, token) as resp:
        await assert_problem(resp, 401, "UNAUTHENTICATED", stack=stack)


async def test_control_a_correctly_claimed_token_with_the_real_key_is_accepted(
    stack: Stack, http: aiohttp.ClientSession, victim: User, signing_key: Any
) -> None:
    async with await me_status(http, stack, signed(signing_key, claims_for(victim))) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["id"] == victim.id


async def test_alg_none_is_refused(
    stack: Stack, http: aiohttp.ClientSession, victim: User, signing_key: Any
) -> None:
    for alg in ("none", "None", "NONE", ""):
        await assert_rejected(
            http,
            stack,
            raw_token({"alg": alg, "typ": "JWT", "kid": signing_key[0]}, claims_for(victim)),
        )
    # A real token re-labelled `none` with its signature stripped.
    head, payload, _ = victim.access_token.split(".")
    header = json.loads(unb64(head))
    header["alg"] = "none"
    await assert_rejected(http, stack, f"{b64(json.dumps(header).encode())}.{payload}.")


async def test_hs256_signed_with_the_public_key_is_refused(
    stack: Stack, http: aiohttp.ClientSession, victim: User, jwks: dict[str, Any]
) -> None:
    jwk = jwks["keys"][0]
    secrets = [unb64(jwk["x"]), jwk["x"].encode(), json.dumps(jwk).encode()]
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        for secret in secrets:
            header = {"alg": alg, "typ": "JWT", "kid": jwk["kid"]}
            unsigned = raw_token(header, claims_for(victim)).rsplit(".", 1)[0]
            mac = hmac.new(secret, unsigned.encode(), digest).digest()
            await assert_rejected(http, stack, f"{unsigned}.{b64(mac)}")


async def test_wrong_or_unknown_kid_is_refused(
    stack: Stack, http: aiohttp.ClientSession, victim: User, signing_key: Any
) -> None:
    attacker = (signing_key[0], Ed25519PrivateKey.generate())
    await assert_rejected(http, stack, signed(attacker, claims_for(victim)))  # real kid, wrong key
    await assert_rejected(http, stack, signed(attacker, claims_for(victim), kid="attacker-key"))
    await assert_rejected(http, stack, signed(signing_key, claims_for(victim), kid="nope"))
    for kid in ("../../etc/passwd", {"$ne": None}, 42, ""):
        token = raw_token({"alg": "EdDSA", "kid": kid}, claims_for(victim), b"x" * 64)
        await assert_rejected(http, stack, token)
    no_kid = jwt.encode(claims_for(victim), signing_key[1], algorithm="EdDSA")
    await assert_rejected(http, stack, no_kid)


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"exp": int(time.time()) - 120}, id="expired"),
        pytest.param({"nbf": int(time.time()) + 3600}, id="not-yet-valid"),
        pytest.param({"iss": "evil"}, id="wrong-iss"),
        pytest.param({"aud": "someone-else"}, id="wrong-aud"),
        pytest.param({"aud": ["someone-else"]}, id="wrong-aud-list"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"jti": None}, id="no-jti"),
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"iss": None}, id="no-iss"),
        pytest.param({"aud": None}, id="no-aud"),
    ],
)
async def test_claims_are_checked_even_with_a_valid_signature(
    stack: Stack,
    http: aiohttp.ClientSession,
    victim: User,
    signing_key: Any,
    override: dict[str, Any],
) -> None:
    now = int(time.time())
    if "exp" in override and override["exp"] is not None:
        override = {**override, "exp": now - 120, "iat": now - 1000, "nbf": now - 1000}
    if "nbf" in override:
        override = {**override, "nbf": now + 3600}
    await assert_rejected(http, stack, signed(signing_key, claims_for(victim, **override)))


async def test_a_tampered_payload_breaks_the_signature(
    stack: Stack, http: aiohttp.ClientSession, victim: User
) -> None:
    attacker = await new_user(stack, "Attacker")
    head, payload, signature = attacker.access_token.split(".")
    claims = json.loads(unb64(payload))
    for change in (
        {"sub": victim.id},
        {"roles": ["admin", "user"]},
        {"exp": claims["exp"] + 86400},
    ):
        forged = b64(json.dumps({**claims, **change}).encode())
        await assert_rejected(http, stack, f"{head}.{forged}.{signature}")
    # The untouched token still works, and its holder cannot reach the admin API.
    async with await me_status(http, stack, attacker.access_token) as resp:
        assert (await resp.json())["id"] == attacker.id
    async with http.get(f"{stack.gateway}/api/v1/admin/users", headers=attacker.auth) as resp:
        await assert_problem(resp, 403, "FORBIDDEN", stack=stack)


async def test_garbage_credentials_are_401_problems(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    for value in (
        "Bearer",
        "Bearer ",
        "Bearer a.b.c",
        "Bearer ....",
        "Basic YTpi",
        "Bearer " + "A" * 4000,
        "Bearer eyJhbGciOiJFZERTQSJ9.e30.\x00",
    ):
        try:
            async with http.get(
                f"{stack.gateway}/api/v1/users/me", headers={"Authorization": value}
            ) as resp:
                await assert_problem(resp, (400, 401), stack=stack)
        except ValueError:  # the client refuses to send a NUL in a header: nothing to test
            continue


async def test_a_revoked_jti_is_dead_after_logout_and_so_is_its_refresh_family(
    stack: Stack, http: aiohttp.ClientSession, victim: User
) -> None:
    async with await me_status(http, stack, victim.access_token) as resp:
        assert resp.status == 200
    async with http.post(
        f"{stack.gateway}/api/v1/auth/logout",
        headers=victim.auth,
        json={"refresh_token": victim.refresh_token},
    ) as resp:
        assert resp.status == 204, await resp.text()
    await assert_rejected(http, stack, victim.access_token)
    async with http.post(
        f"{stack.gateway}/api/v1/auth/refresh", json={"refresh_token": victim.refresh_token}
    ) as resp:
        await assert_problem(resp, 401, "UNAUTHENTICATED", stack=stack)
    # Replaying the dead token with another spelling of the scheme changes nothing.
    async with http.get(
        f"{stack.gateway}/api/v1/users/me",
        headers={"Authorization": f"bearer {victim.access_token}"},
    ) as resp:
        await assert_problem(resp, 401, "UNAUTHENTICATED", stack=stack)
