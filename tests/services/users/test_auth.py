"""The contract's Authentication table, end to end through the real app (SecantusDB + Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest
import redis.asyncio as aioredis

from services.users.settings import Settings
from tests.services.users.conftest import (
    PASSWORD,
    ClientFactory,
    Users,
    identity_for,
    outbox_events,
    user_identity,
)

PROBLEM = "application/problem+json"


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    return body


# -- register ------------------------------------------------------------------------------


async def test_register_returns_the_user_and_emits_user_created(users: Users, db: Any) -> None:
    resp = await users.client.post(
        "/api/v1/auth/register",
        json={"email": "  Ada@Example.COM ", "password": PASSWORD, "display_name": " Ada "},
    )
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"id", "email", "display_name", "roles", "created_at", "updated_at"}
    assert body["email"] == "ada@example.com"
    assert body["display_name"] == "Ada"
    assert body["roles"] == ["user"]
    assert body["created_at"].endswith("Z")
    stored = await db["users"].find_one({"email": "ada@example.com"})
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in orjson.dumps(stored, default=str).decode()
    [event] = await outbox_events(db, "user.created")
    assert event["data"]["user_id"] == body["id"]
    assert event["source"] == "users"


async def test_register_taken_email_is_409_whatever_its_case(users: Users, db: Any) -> None:
    await users.register("taken@example.com")
    resp = await users.client.post(
        "/api/v1/auth/register",
        json={"email": "TAKEN@example.com", "password": PASSWORD, "display_name": "x"},
    )
    await problem(resp, 409, "CONFLICT")
    assert await db["users"].count_documents({}) == 1
    assert len(await outbox_events(db, "user.created")) == 1


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short-pass1", "at least 12"),
        ("x" * 129, "at most 128"),
        ("passwordpassword", "too common"),
        ("Password123456", "too common"),
        ("policy@example.com", "email"),
    ],
)
async def test_register_refuses_weak_passwords(
    users: Users, db: Any, password: str, message: str
) -> None:
    resp = await users.client.post(
        "/api/v1/auth/register",
        json={"email": "policy@example.com", "password": password, "display_name": "P"},
    )
    body = await problem(resp, 422, "VALIDATION_FAILED")
    assert body["errors"][0]["field"] == "password"
    assert message in body["errors"][0]["message"]
    assert await db["users"].count_documents({}) == 0


async def test_register_accepts_long_passphrases_without_composition_rules(users: Users) -> None:
    await users.register(password="all lowercase words no digits at all")
    await users.register(password="é" * 128)


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@example.com", "password": PASSWORD, "display_name": "A", "roles": ["admin"]},
        {"email": "a@example.com", "password": PASSWORD, "display_name": "A", "disabled": False},
        {"email": "not-an-email", "password": PASSWORD, "display_name": "A"},
        {"email": "a@example.com", "password": PASSWORD, "display_name": ""},
        {"email": "a@example.com", "password": PASSWORD, "display_name": "bad\x00name"},
        {"email": "a@example.com", "password": PASSWORD},
        {"email": "a@example.com", "password": 123456789012, "display_name": "A"},
    ],
)
async def test_register_refuses_malformed_and_mass_assignment(
    users: Users, db: Any, body: dict[str, Any]
) -> None:
    resp = await users.client.post("/api/v1/auth/register", json=body)
    await problem(resp, 422, "VALIDATION_FAILED")
    assert await db["users"].count_documents({}) == 0


async def test_register_refuses_non_json_and_oversized(users: Users, db: Any) -> None:
    resp = await users.client.post(
        "/api/v1/auth/register", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    await problem(resp, 400, "VALIDATION_FAILED")
    resp = await users.client.post(
        "/api/v1/auth/register",
        data=b"email=a",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    await problem(resp, 415, "UNSUPPORTED_MEDIA_TYPE")
    resp = await users.client.post(
        "/api/v1/auth/register",
        data=b"[" + b"1," * 600_000 + b"1]",
        headers={"Content-Type": "application/json"},
    )
    await problem(resp, 413, "PAYLOAD_TOO_LARGE")
    assert await db["users"].count_documents({}) == 0


# -- login ---------------------------------------------------------------------------------


async def test_login_returns_a_token_pair_with_the_contract_claims(users: Users, db: Any) -> None:
    user = await users.register("claims@example.com")
    resp = await users.client.post(
        "/api/v1/auth/login",
        json={"email": "Claims@Example.com", "password": PASSWORD},
        headers={"User-Agent": "pytest/1", "X-Forwarded-For": "203.0.113.7, 10.0.0.1"},
    )
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA"
    assert header["kid"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid", "roles"} <= set(claims)
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("portico", "portico-api", user["id"])
    assert claims["exp"] - claims["iat"] == 900
    assert claims["roles"] == ["user"]
    session = await db["sessions"].find_one({})
    assert str(session["_id"]) == claims["sid"]
    assert (session["ip"], session["user_agent"]) == ("203.0.113.7", "pytest/1")
    # Refresh tokens are stored only as digests.
    assert await db["refresh_tokens"].count_documents({"token_hash": body["refresh_token"]}) == 0
    audit = await db["audit_log"].find_one({"action": "login.succeeded"})
    assert audit["ip"] == "203.0.113.7"
    assert audit["request_id"] == resp.headers["X-Request-ID"]


async def test_unknown_email_and_wrong_password_look_the_same(users: Users, db: Any) -> None:
    await users.register("known@example.com")
    wrong = await users.client.post(
        "/api/v1/auth/login", json={"email": "known@example.com", "password": "nope" * 4}
    )
    unknown = await users.client.post(
        "/api/v1/auth/login", json={"email": "ghost@example.com", "password": "nope" * 4}
    )
    a, b = (
        await problem(wrong, 401, "UNAUTHENTICATED"),
        await problem(unknown, 401, "UNAUTHENTICATED"),
    )
    a.pop("request_id"), b.pop("request_id")
    assert a == b
    assert set(wrong.headers) - {"Date", "X-Request-ID", "Content-Length"} == set(
        unknown.headers
    ) - {"Date", "X-Request-ID", "Content-Length"}
    failed = [d async for d in db["audit_log"].find({"action": "login.failed"})]
    assert len(failed) == 2


async def test_unknown_email_still_pays_for_an_argon2_verification(
    users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.users.keys import AUTH

    passwords = users.client.app[AUTH].passwords
    calls: list[str] = []
    original = passwords._verify_sync

    def spy(password_hash: str, password: str) -> bool:
        calls.append(password_hash[:9])
        return bool(original(password_hash, password))

    monkeypatch.setattr(passwords, "_verify_sync", spy)
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "x" * 14}
    )
    assert resp.status == 401
    assert calls == ["$argon2id"]


async def test_lockout_after_repeated_failures_then_reset_on_success(
    make_client: ClientFactory, make_settings: Any, db: Any, redis: aioredis.Redis
) -> None:
    users = Users(await make_client(make_settings(lockout_threshold=3, lockout_base_seconds=60)))
    await users.register("lock@example.com")
    bad = {"email": "lock@example.com", "password": "wrong password!"}
    for _ in range(2):
        await problem(
            await users.client.post("/api/v1/auth/login", json=bad), 401, "UNAUTHENTICATED"
        )
    resp = await users.client.post("/api/v1/auth/login", json=bad)
    await problem(resp, 423, "ACCOUNT_LOCKED")
    assert 55 <= int(resp.headers["Retry-After"]) <= 60
    # Locked: even the right password is refused.
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "lock@example.com", "password": PASSWORD}
    )
    await problem(resp, 423, "ACCOUNT_LOCKED")
    assert await db["audit_log"].count_documents({"action": "account.locked"}) == 1
    # Expire the lock (as time would) — the next lock doubles.
    [key] = [k async for k in redis.scan_iter(match=f"{users_prefix(users)}users:lockout:*")]
    await redis.hset(key, "until", 0)
    for _ in range(2):
        await users.client.post("/api/v1/auth/login", json=bad)
    resp = await users.client.post("/api/v1/auth/login", json=bad)
    await problem(resp, 423, "ACCOUNT_LOCKED")
    assert 115 <= int(resp.headers["Retry-After"]) <= 120
    # A success clears the state: failures count from zero again.
    await redis.hset(key, "until", 0)
    await users.login("lock@example.com")
    for _ in range(2):
        await problem(
            await users.client.post("/api/v1/auth/login", json=bad), 401, "UNAUTHENTICATED"
        )


async def reset_requests_done(users: Users) -> None:
    """Reset tokens are issued after the 202 (constant-time answer); wait for them."""
    from services.users.keys import CREDENTIALS

    await users.client.app[CREDENTIALS].drain()


def users_prefix(users: Users) -> str:
    from services.users.keys import SETTINGS

    return str(users.client.app[SETTINGS].redis_prefix)


async def test_unknown_email_locks_out_like_a_real_one(
    make_client: ClientFactory, make_settings: Any
) -> None:
    users = Users(await make_client(make_settings(lockout_threshold=2)))
    for email in ("real@example.com", "ghost@example.com"):
        if email.startswith("real"):
            await users.register(email)
        body = {"email": email, "password": "wrong password!"}
        await users.client.post("/api/v1/auth/login", json=body)
        resp = await users.client.post("/api/v1/auth/login", json=body)
        await problem(resp, 423, "ACCOUNT_LOCKED")


async def test_login_attempts_are_throttled_per_ip(
    make_client: ClientFactory, make_settings: Any
) -> None:
    users = Users(await make_client(make_settings(login_ip_max_attempts=3)))
    await users.register("ip@example.com")
    ip = {"X-Forwarded-For": "198.51.100.9"}
    for _ in range(3):
        await users.login("ip@example.com", **ip)
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "ip@example.com", "password": PASSWORD}, headers=ip
    )
    await problem(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) >= 1
    # Another address is not affected.
    await users.login("ip@example.com", **{"X-Forwarded-For": "198.51.100.10"})


async def test_disabled_user_cannot_sign_in_or_refresh(users: Users, db: Any) -> None:
    _user, tokens = await users.signup("off@example.com")
    await db["users"].update_one({"email": "off@example.com"}, {"$set": {"disabled": True}})
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "off@example.com", "password": PASSWORD}
    )
    await problem(resp, 403, "FORBIDDEN")
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(resp, 401, "UNAUTHENTICATED")


async def test_login_rehashes_when_argon2_parameters_change(
    make_client: ClientFactory, make_settings: Any, db: Any
) -> None:
    weak = Users(await make_client(make_settings(argon2_memory_kib=64)))
    await weak.register("rehash@example.com")
    before = (await db["users"].find_one({}))["password_hash"]
    assert "m=64," in before
    strong = Users(await make_client(make_settings(argon2_memory_kib=128)))
    await strong.login("rehash@example.com")
    after = (await db["users"].find_one({}))["password_hash"]
    assert "m=128," in after
    assert after != before
    await strong.login("rehash@example.com")  # the new hash verifies


# -- refresh -------------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_is_spent(users: Users) -> None:
    _, tokens = await users.signup()
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 200
    new = await resp.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    old_claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    new_claims = jwt.decode(new["access_token"], options={"verify_signature": False})
    assert old_claims["sid"] == new_claims["sid"]
    assert old_claims["jti"] != new_claims["jti"]
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]}
    )
    assert resp.status == 200


async def test_spent_refresh_token_revokes_the_family(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    _, tokens = await users.signup()
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    first = await (
        await users.client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
    ).json()
    # An attacker replays the stolen, already spent token.
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(resp, 401, "UNAUTHENTICATED")
    # The legitimate holder's newer token is dead too: the whole family is revoked.
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    await problem(resp, 401, "UNAUTHENTICATED")
    assert await redis.exists(f"{users_prefix(users)}revoked:sid:{sid}")
    [event] = await outbox_events(db, "session.revoked")
    assert event["data"]["session_id"] == sid
    assert await db["audit_log"].count_documents({"action": "refresh.reused"}) == 1


@pytest.mark.parametrize("token", ["", "garbage", "x" * 513])
async def test_refresh_with_garbage_is_refused(users: Users, token: str) -> None:
    resp = await users.client.post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert resp.status in (401, 422)
    assert resp.content_type == PROBLEM


async def test_expired_refresh_token_is_refused(users: Users, db: Any) -> None:
    _, tokens = await users.signup()
    await db["refresh_tokens"].update_many(
        {}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(resp, 401, "UNAUTHENTICATED")


# -- logout --------------------------------------------------------------------------------


async def test_logout_kills_the_access_token_and_its_family(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    _, tokens = await users.signup()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    prefix = users_prefix(users)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(f"{prefix}revocations")
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        resp = await users.client.post(
            "/api/v1/auth/logout", json={}, headers=identity_for(tokens["access_token"])
        )
        assert resp.status == 204
        messages = []
        for _ in range(2):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert message is not None
            messages.append(orjson.loads(message["data"]))
    assert {"kind": "jti", "value": claims["jti"]} in messages
    assert {"kind": "sid", "value": claims["sid"]} in messages
    ttl = await redis.ttl(f"{prefix}revoked:jti:{claims['jti']}")
    assert 0 < ttl <= 900 + 60
    assert 0 < await redis.ttl(f"{prefix}revoked:sid:{claims['sid']}") <= 960
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(resp, 401, "UNAUTHENTICATED")
    assert len(await outbox_events(db, "session.revoked")) == 1


async def test_logout_needs_a_user(users: Users) -> None:
    await problem(await users.client.post("/api/v1/auth/logout", json={}), 401, "UNAUTHENTICATED")
    resp = await users.client.post(
        "/api/v1/auth/logout", json={}, headers={"X-Portico-Identity": "v1.forged.sig"}
    )
    await problem(resp, 401, "UNAUTHENTICATED")


# -- password change -----------------------------------------------------------------------


async def test_password_change_revokes_every_other_session(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    user, here = await users.signup("pw@example.com")
    elsewhere = await users.login("pw@example.com")
    here_sid = jwt.decode(here["access_token"], options={"verify_signature": False})["sid"]
    other_sid = jwt.decode(elsewhere["access_token"], options={"verify_signature": False})["sid"]
    new = "a brand new passphrase"
    resp = await users.client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": new},
        headers=identity_for(here["access_token"]),
    )
    assert resp.status == 204
    prefix = users_prefix(users)
    assert await redis.exists(f"{prefix}revoked:sid:{other_sid}")
    assert not await redis.exists(f"{prefix}revoked:sid:{here_sid}")
    assert not await redis.exists(f"{prefix}user:{user['id']}:not_before")
    # The current session keeps refreshing; the other cannot.
    ok = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": here["refresh_token"]}
    )
    assert ok.status == 200
    dead = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}
    )
    await problem(dead, 401, "UNAUTHENTICATED")
    [event] = await outbox_events(db, "session.revoked")
    assert event["data"] == {"user_id": user["id"], "session_id": other_sid}
    await users.login("pw@example.com", new)
    assert await db["audit_log"].count_documents({"action": "password.changed"}) == 1


async def test_password_change_with_wrong_current_password_changes_nothing(
    users: Users, db: Any
) -> None:
    _, tokens = await users.signup("pw2@example.com")
    before = (await db["users"].find_one({}))["password_hash"]
    resp = await users.client.post(
        "/api/v1/auth/password",
        json={"current_password": "not my password", "new_password": "another good passphrase"},
        headers=identity_for(tokens["access_token"]),
    )
    body = await problem(resp, 422, "VALIDATION_FAILED")
    assert body["errors"][0]["field"] == "current_password"
    resp = await users.client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "password1234"},
        headers=identity_for(tokens["access_token"]),
    )
    body = await problem(resp, 422, "VALIDATION_FAILED")
    assert body["errors"][0]["field"] == "new_password"
    assert (await db["users"].find_one({}))["password_hash"] == before
    assert await outbox_events(db, "session.revoked") == []


async def test_password_change_refuses_api_keys_and_anonymous(users: Users) -> None:
    user, _ = await users.signup()
    body = {"current_password": PASSWORD, "new_password": "another good passphrase"}
    resp = await users.client.post("/api/v1/auth/password", json=body)
    await problem(resp, 401, "UNAUTHENTICATED")
    resp = await users.client.post(
        "/api/v1/auth/password", json=body, headers=user_identity(user["id"], kind="api_key")
    )
    await problem(resp, 403, "FORBIDDEN")


# -- sessions ------------------------------------------------------------------------------


async def test_sessions_list_and_revoke(users: Users, db: Any, redis: aioredis.Redis) -> None:
    _user, here = await users.signup("sess@example.com")
    other = await users.login("sess@example.com", **{"User-Agent": "phone"})
    headers = identity_for(here["access_token"])
    resp = await users.client.get("/api/v1/auth/sessions", headers=headers)
    assert resp.status == 200
    items = (await resp.json())["items"]
    assert len(items) == 2
    assert set(items[0]) == {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}
    current = [s for s in items if s["current"]]
    here_sid = jwt.decode(here["access_token"], options={"verify_signature": False})["sid"]
    assert [s["id"] for s in current] == [here_sid]
    other_sid = next(s["id"] for s in items if not s["current"])
    assert next(s for s in items if s["id"] == other_sid)["user_agent"] == "phone"
    resp = await users.client.delete(f"/api/v1/auth/sessions/{other_sid}", headers=headers)
    assert resp.status == 204
    assert await redis.exists(f"{users_prefix(users)}revoked:sid:{other_sid}")
    dead = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
    )
    await problem(dead, 401, "UNAUTHENTICATED")
    items = (await (await users.client.get("/api/v1/auth/sessions", headers=headers)).json())[
        "items"
    ]
    assert [s["id"] for s in items] == [here_sid]
    # Revoking it again, or a made-up id, is a 404.
    for sid in (other_sid, "nope", "0" * 24):
        resp = await users.client.delete(f"/api/v1/auth/sessions/{sid}", headers=headers)
        await problem(resp, 404, "NOT_FOUND")


async def test_cannot_see_or_revoke_someone_elses_session(users: Users, db: Any) -> None:
    _, mine = await users.signup()
    _, theirs = await users.signup()
    their_sid = jwt.decode(theirs["access_token"], options={"verify_signature": False})["sid"]
    headers = identity_for(mine["access_token"])
    items = (await (await users.client.get("/api/v1/auth/sessions", headers=headers)).json())[
        "items"
    ]
    assert their_sid not in [s["id"] for s in items]
    resp = await users.client.delete(f"/api/v1/auth/sessions/{their_sid}", headers=headers)
    await problem(resp, 404, "NOT_FOUND")
    assert await db["sessions"].count_documents({"revoked_at": None}) == 2


# -- password reset ------------------------------------------------------------------------


async def test_password_reset_is_202_for_everyone_and_mails_only_real_users(
    users: Users, db: Any
) -> None:
    user = await users.register("reset@example.com")
    for email in ("reset@example.com", "nobody@example.com"):
        resp = await users.client.post("/api/v1/auth/password-reset", json={"email": email})
        assert resp.status == 202
        assert await resp.read() == b""
    await reset_requests_done(users)
    [event] = await outbox_events(db, "user.password_reset_requested")
    data = event["data"]
    assert set(data) == {"user_id", "email", "token", "expires_at"}
    assert (data["user_id"], data["email"]) == (user["id"], "reset@example.com")
    expires = datetime.fromisoformat(data["expires_at"])
    assert timedelta(minutes=29) < expires - datetime.now(UTC) <= timedelta(minutes=30)
    stored = await db["password_resets"].find_one({})
    assert stored["token_hash"] != data["token"]


async def test_password_reset_confirm_revokes_everything_and_is_single_use(
    users: Users, db: Any, redis: aioredis.Redis
) -> None:
    user, tokens = await users.signup("reset2@example.com")
    await users.client.post("/api/v1/auth/password-reset", json={"email": "reset2@example.com"})
    await reset_requests_done(users)
    [event] = await outbox_events(db, "user.password_reset_requested")
    token = event["data"]["token"]
    # A refused password does not burn the token.
    resp = await users.client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "short"}
    )
    await problem(resp, 422, "VALIDATION_FAILED")
    new = "reset to a fresh passphrase"
    resp = await users.client.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": new}
    )
    assert resp.status == 204
    prefix = users_prefix(users)
    not_before = await redis.get(f"{prefix}user:{user['id']}:not_before")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert not_before is not None
    assert int(not_before) >= claims["iat"]
    assert 0 < await redis.ttl(f"{prefix}user:{user['id']}:not_before") <= 960
    assert await redis.exists(f"{prefix}revoked:sid:{claims['sid']}")
    dead = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    await problem(dead, 401, "UNAUTHENTICATED")
    assert len(await outbox_events(db, "session.revoked")) == 1
    # Used once: a second use is 410; the new password works, the old does not.
    resp = await users.client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": token, "new_password": "yet another passphrase"},
    )
    await problem(resp, 410, "GONE")
    await users.login("reset2@example.com", new)
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "reset2@example.com", "password": PASSWORD}
    )
    await problem(resp, 401, "UNAUTHENTICATED")


async def test_expired_or_unknown_reset_token_is_gone(users: Users, db: Any) -> None:
    await users.register("reset3@example.com")
    await users.client.post("/api/v1/auth/password-reset", json={"email": "reset3@example.com"})
    await reset_requests_done(users)
    [event] = await outbox_events(db, "user.password_reset_requested")
    await db["password_resets"].update_many(
        {}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    for token in (event["data"]["token"], "made-up-token"):
        resp = await users.client.post(
            "/api/v1/auth/password-reset/confirm",
            json={"token": token, "new_password": "a fine passphrase!"},
        )
        await problem(resp, 410, "GONE")
    await users.login("reset3@example.com")


# -- JWKS ----------------------------------------------------------------------------------


async def test_jwks_lists_the_signing_key(users: Users, settings: Settings) -> None:
    _, tokens = await users.signup()
    resp = await users.client.get("/.well-known/jwks.json")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    [key] = (await resp.json())["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert key["kid"] == jwt.get_unverified_header(tokens["access_token"])["kid"]
    assert "d" not in key
    public = jwt.PyJWK(key).key
    claims = jwt.decode(
        tokens["access_token"],
        public,
        algorithms=["EdDSA"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    assert claims["roles"] == ["user"]


async def test_login_fails_closed_when_redis_is_unreachable(
    make_client: ClientFactory, make_settings: Any, db: Any
) -> None:
    from libs.common.embedded import free_port

    users = Users(await make_client(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")))
    await users.register("noredis@example.com")
    resp = await users.client.post(
        "/api/v1/auth/login", json={"email": "noredis@example.com", "password": PASSWORD}
    )
    body = await problem(resp, 503, "UPSTREAM_UNAVAILABLE")
    assert "redis" not in body["detail"].lower()
    assert await db["sessions"].count_documents({}) == 0


async def test_credentials_never_reach_the_logs(
    users: Users, capfd: pytest.CaptureFixture[str]
) -> None:
    _, tokens = await users.signup("logs@example.com")
    resp = await users.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 200
    await users.client.post(
        "/api/v1/auth/login", json={"email": "logs@example.com", "password": "wrong password!"}
    )
    await users.client.post("/api/v1/auth/password-reset", json={"email": "logs@example.com"})
    await reset_requests_done(users)
    out, err = capfd.readouterr()
    assert "request" in out + err  # the access log did run
    for secret in (PASSWORD, "wrong password!", tokens["refresh_token"], tokens["access_token"]):
        assert secret not in out + err
