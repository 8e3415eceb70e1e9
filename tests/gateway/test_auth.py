"""Edge authentication: JWTs verified locally, every kind of bad token refused, revocation within
one request, API keys with scopes, identity headers from clients never reaching a service."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app import GATEWAY
from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity, verify_identity
from services.users.service.revocation import Revocations
from tests.conftest import TEST_SECRET
from tests.gateway.conftest import Signer, Upstream, assert_problem, b64, unsigned_token

API_KEY = "pk_abcdefgh_s3cret"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def metric(gateway: Any, name: str) -> float:
    text = await (await gateway.get("/metrics")).text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))  # fmt: skip


async def test_required_route_refuses_anonymous(gateway: Any, orgs: Upstream) -> None:
    response = await gateway.get("/api/v1/private")
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert orgs.recorder.hits == []


async def test_valid_token_reaches_service_with_signed_identity(
    gateway: Any, signer: Signer, orgs: Upstream
) -> None:
    token = signer.token("user-7", roles=["user", "admin"])
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    assert response.status == 200
    forwarded = orgs.recorder.hits[0]["headers"]
    who = verify_identity(forwarded[IDENTITY_HEADER], TEST_SECRET)
    assert (who.id, who.kind, who.roles) == ("user-7", "user", ("user", "admin"))
    assert who.token_id is not None
    assert who.session_id is not None


async def test_optional_route_accepts_anonymous_and_users(
    gateway: Any, signer: Signer, orgs: Upstream
) -> None:
    anonymous = await (await gateway.get("/api/v1/optional")).json()
    assert anonymous["principal"] is None
    signed_in = await gateway.get("/api/v1/optional", headers=bearer(signer.token("u2")))
    assert (await signed_in.json())["principal"]["id"] == "u2"
    # A bad token on an optional route is refused, not silently downgraded to anonymous.
    bad = await gateway.get("/api/v1/optional", headers=bearer("garbage"))
    await assert_problem(bad, 401, "UNAUTHENTICATED")


async def test_public_route_forwards_no_identity(
    gateway: Any, signer: Signer, orgs: Upstream
) -> None:
    response = await gateway.get("/api/v1/public", headers=bearer("not-even-a-token"))
    assert response.status == 200
    assert IDENTITY_HEADER not in orgs.recorder.hits[0]["headers"]


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    return f"{header}.{b64(orjson.dumps(claims))}.{signature}"


BAD_TOKENS: dict[str, Any] = {
    "tampered": lambda s: tampered(s.token()),
    "expired": lambda s: s.token(exp=int(time.time()) - 120, iat=int(time.time()) - 1000),
    "not_yet_valid": lambda s: s.token(nbf=int(time.time()) + 600),
    "wrong_issuer": lambda s: s.token(iss="evil"),
    "wrong_audience": lambda s: s.token(aud="other-api"),
    "missing_exp": lambda s: s.token(exp=None),
    "missing_jti": lambda s: s.token(jti=None),
    "alg_none": lambda s: unsigned_token({"alg": "none", "kid": "k1"}, s.claims(), None),
    "hs256_with_public_key": lambda s: unsigned_token(
        {"alg": "HS256", "kid": "k1", "typ": "JWT"}, s.claims(), s.public_pem()
    ),
    "unknown_kid": lambda s: (s.add_key("rogue", publish=False), s.token(kid="rogue"))[1],
    "not_a_jwt": lambda s: "abc.def",
    "empty_signature": lambda s: s.token().rsplit(".", 1)[0] + ".",
    "garbage_header": lambda s: "!!!." + s.token().split(".", 1)[1],
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_is_refused(
    gateway: Any, signer: Signer, orgs: Upstream, kind: str
) -> None:
    token = BAD_TOKENS[kind](signer)
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    body = await assert_problem(response, 401, "UNAUTHENTICATED")
    assert token not in orjson.dumps(body).decode()
    assert orgs.recorder.hits == []


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "token"])
async def test_malformed_authorization_header(gateway: Any, orgs: Upstream, value: str) -> None:
    response = await gateway.get("/api/v1/private", headers={"Authorization": value})
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert orgs.recorder.hits == []


async def test_auth_failures_are_counted_by_reason(gateway: Any, signer: Signer) -> None:
    before = await metric(gateway, 'gateway_auth_failures_total{reason="wrong_audience"}')
    await gateway.get("/api/v1/private", headers=bearer(signer.token(aud="x")))
    after = await metric(gateway, 'gateway_auth_failures_total{reason="wrong_audience"}')
    assert after == before + 1


async def test_jwks_is_cached_not_fetched_per_request(
    gateway: Any, signer: Signer, users: Upstream
) -> None:
    for _ in range(5):
        response = await gateway.get("/api/v1/private", headers=bearer(signer.token()))
        assert response.status == 200
    assert users.recorder.jwks_fetches == 1  # the start-up warm-up


async def test_rotated_key_is_picked_up_on_unknown_kid(
    gateway: Any, signer: Signer, users: Upstream
) -> None:
    signer.add_key("k2")  # users rotates: k2 signs, k1 still verifies
    new = await gateway.get("/api/v1/private", headers=bearer(signer.token(kid="k2")))
    old = await gateway.get("/api/v1/private", headers=bearer(signer.token(kid="k1")))
    assert (new.status, old.status) == (200, 200)
    assert users.recorder.jwks_fetches == 2


async def test_unknown_kid_refreshes_are_rate_limited(
    make_gateway: Any, signer: Signer, users: Upstream
) -> None:
    gateway = await make_gateway(jwks_min_refresh_seconds=60)
    signer.add_key("rogue", publish=False)
    for _ in range(5):
        response = await gateway.get("/api/v1/private", headers=bearer(signer.token(kid="rogue")))
        await assert_problem(response, 401, "UNAUTHENTICATED")
    assert users.recorder.jwks_fetches == 1


@pytest.fixture
async def redis(redis_url: str) -> Any:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def revocable(signer: Signer, sub: str, **claims: Any) -> tuple[str, dict[str, Any]]:
    """A token and its claims (jti, sid, iat: what revocation keys name)."""
    made = signer.claims(sub, **claims)
    return signer.token(sub, jti=made["jti"], sid=made["sid"], iat=made["iat"]), made


async def get_private(gateway: Any, token: str, count: int) -> None:
    """`count` GETs of a private route with `token`, each answered 200."""
    for _ in range(count):
        assert (await gateway.get("/api/v1/private", headers=bearer(token))).status == 200


@pytest.fixture
def revocations(redis: Any, redis_prefix: str) -> Revocations:
    """What the users service runs on logout, session revocation and password change: SET the
    denylist key, then PUBLISH on the revocation channel."""
    return Revocations(redis, prefix=redis_prefix, access_seconds=900)


async def feed_epoch(gateway: Any, *, other_than: int = 0) -> int:
    """The gateway's revocation-feed epoch once its subscription is confirmed (and is not
    `other_than`)."""
    auth = gateway.app[GATEWAY].auth
    for _ in range(200):
        if auth.revocation_epoch not in (0, other_than):
            return int(auth.revocation_epoch)
        await asyncio.sleep(0.02)
    raise AssertionError("the revocation feed never subscribed")


async def kill_feed(redis: Any, redis_prefix: str) -> None:
    """Cut the gateway's subscription from the Redis side (as a Redis restart or failover would)."""
    name = f"portico-revocations@{redis_prefix}revocations"
    clients = await redis.client_list()
    ids = [c["id"] for c in clients if c.get("name") == name]
    assert ids, "the feed's connection is not in CLIENT LIST"
    for client_id in ids:
        await redis.client_kill_filter(_id=client_id)


class Monitor:
    """The commands clients send Redis that mention `needle`, through MONITOR (a real
    observation of what the gateway asks Redis, among every other client's commands)."""

    def __init__(self, redis_url: str, needle: str) -> None:
        self.redis_url, self.needle = redis_url, needle

    async def during(self, action: Callable[[], Awaitable[None]]) -> list[str]:
        client = aioredis.from_url(self.redis_url)
        marker = f"monitor-done-{time.monotonic_ns()}"
        seen: list[str] = []
        try:
            async with client.monitor() as monitor:
                await action()
                await client.echo(marker)
                while True:
                    info = await asyncio.wait_for(monitor.next_command(), 5)
                    command = info["command"]
                    if marker in command:
                        return seen
                    if self.needle in command and info.get("client_type") != "lua":
                        seen.append(command)  # sent by a client, not run by a script
        finally:
            await client.aclose()


@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "rate-limited"])
@pytest.mark.parametrize("check", ["redis", "feed"])
@pytest.mark.parametrize("fast_front", [True, False])
@pytest.mark.parametrize("kind", ["jti", "sid", "user"])
async def test_revoked_token_is_refused_on_the_next_request(
    make_gateway: Any, signer: Signer, revocations: Revocations, orgs: Upstream, kind: str,
    fast_front: bool, check: str, limits: bool,
) -> None:  # fmt: skip
    # Rate-limited, the fast front has the limiter's script judge the token (one round trip).
    gateway = await make_gateway(
        fast_front=fast_front, revocation_check=check, ratelimit_enabled=limits
    )
    await feed_epoch(gateway)
    token, claims = revocable(signer, "user-9", iat=int(time.time()) - 10)
    for _ in range(3):  # with the feed trusted: checked in Redis once, then on the feed's word
        assert (await gateway.get("/api/v1/private", headers=bearer(token))).status == 200
    if kind == "jti":
        await revocations.revoke_token(claims["jti"], claims["exp"])
    elif kind == "sid":
        await revocations.revoke_sessions([claims["sid"]])
    else:
        await revocations.revoke_user("user-9")
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(orgs.recorder.hits) == 3


@pytest.mark.parametrize("key", ["jti", "sid"])
@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "rate-limited"])
async def test_by_default_every_request_is_checked_in_redis_whatever_the_feed_says(
    make_gateway: Any, signer: Signer, redis: Any, redis_url: str, redis_prefix: str,
    orgs: Upstream, limits: bool, key: str,
) -> None:  # fmt: skip
    # The feed is live, but its message could be late (a slow network, a lost segment): only
    # Redis decides. A denylist key whose message never comes refuses the very next request
    # (rate-limited, in the limiter's own script call).
    gateway = await make_gateway(ratelimit_enabled=limits)
    await feed_epoch(gateway)
    token, claims = revocable(signer, "user-15", iat=int(time.time()) - 10)

    checks = await Monitor(redis_url, f"revoked:jti:{claims['jti']}").during(
        lambda: get_private(gateway, token, 4)
    )
    assert len(checks) == 4
    await redis.set(f"{redis_prefix}revoked:{key}:{claims[key]}", "1", ex=960)  # no PUBLISH
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(orgs.recorder.hits) == 4
    if limits:  # past the user policy's burst (100): refused, never charged to the user
        for _ in range(100):
            response = await gateway.get("/api/v1/private", headers=bearer(token))
            await assert_problem(response, 401, "UNAUTHENTICATED")
        fresh = await gateway.get("/api/v1/private", headers=bearer(signer.token("user-15")))
        assert fresh.status == 200, await fresh.text()


async def test_a_trusted_feed_spares_a_known_token_its_redis_command(
    make_gateway: Any, signer: Signer, redis: Any, redis_url: str, redis_prefix: str
) -> None:
    gateway = await make_gateway(revocation_check="feed")
    epoch = await feed_epoch(gateway)
    token, claims = revocable(signer, "user-12")
    monitor = Monitor(redis_url, f"revoked:jti:{claims['jti']}")

    assert (
        len(await monitor.during(lambda: get_private(gateway, token, 5))) == 1
    )  # the first one only
    assert await monitor.during(lambda: get_private(gateway, token, 5)) == []
    # The feed drops: no message can be trusted to arrive, so the token is checked again.
    await kill_feed(redis, redis_prefix)
    await feed_epoch(gateway, other_than=epoch)
    assert len(await monitor.during(lambda: get_private(gateway, token, 3))) == 1


async def test_a_revocation_published_while_the_trusted_feed_was_down_is_still_caught(
    make_gateway: Any, signer: Signer, redis: Any, redis_prefix: str, orgs: Upstream
) -> None:
    gateway = await make_gateway(revocation_check="feed")
    epoch = await feed_epoch(gateway)
    token, claims = revocable(signer, "user-13")
    assert (await gateway.get("/api/v1/private", headers=bearer(token))).status == 200
    await kill_feed(redis, redis_prefix)
    # Revoked while no subscription listened: the key is in Redis, the message went nowhere.
    await redis.set(f"{redis_prefix}revoked:jti:{claims['jti']}", "1", ex=900)
    await feed_epoch(gateway, other_than=epoch)
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(orgs.recorder.hits) == 1


async def test_a_trusted_feed_once_lost_vouches_for_no_token(
    make_gateway: Any, signer: Signer, redis: Any, redis_prefix: str, orgs: Upstream
) -> None:
    gateway = await make_gateway(revocation_check="feed")
    await feed_epoch(gateway)
    token = signer.token("user-14", iat=int(time.time()) - 10)
    for _ in range(2):  # checked in Redis under the live epoch, then trusted
        assert (await gateway.get("/api/v1/private", headers=bearer(token))).status == 200
    auth = gateway.app[GATEWAY].auth
    auth.on_revocation_epoch(0)  # what the listener does the moment its connection is gone
    await redis.set(f"{redis_prefix}user:user-14:not_before", str(int(time.time())), ex=960)
    response = await gateway.get("/api/v1/private", headers=bearer(token))
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(orgs.recorder.hits) == 2


async def test_the_feed_subscribes_for_a_redis_user_that_may_not_name_its_connection(
    make_gateway: Any, signer: Signer, redis: Any, redis_url: str, revocations: Revocations,
    orgs: Upstream,
) -> None:  # fmt: skip
    user, password = f"portico-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*",
                                "+@all", "-client")  # fmt: skip
    try:
        parts = urlsplit(redis_url)
        url = f"redis://{user}:{password}@{parts.hostname}:{parts.port or 6379}{parts.path}"
        gateway = await make_gateway(redis_url=url, revocation_check="feed")
        await feed_epoch(gateway)
        token, claims = revocable(signer, "user-16", iat=int(time.time()) - 10)
        assert (await gateway.get("/api/v1/private", headers=bearer(token))).status == 200
        await revocations.revoke_token(claims["jti"], claims["exp"])
        response = await gateway.get("/api/v1/private", headers=bearer(token))
        await assert_problem(response, 401, "UNAUTHENTICATED")
    finally:
        await redis.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("fast_front", [True, False])
async def test_a_revoked_token_gets_no_cached_answer_and_no_429_first(
    make_gateway: Any, signer: Signer, revocations: Revocations, orgs: Upstream,
    fast_front: bool,
) -> None:  # fmt: skip
    # On a cached, rate-limited route the check runs alongside the limiter and the lookup (one
    # round trip to Redis): a revoked token must still get its 401, not the entry, not a 429.
    gateway = await make_gateway(cache_enabled=True, ratelimit_enabled=True, fast_front=fast_front)
    token, claims = revocable(signer, "user-11", iat=int(time.time()) - 10)
    for expected in ("MISS", "HIT"):
        response = await gateway.get("/api/v1/cached", headers=bearer(token))
        assert response.status == 200
        assert response.headers["X-Cache-Status"] == expected
    await revocations.revoke_token(claims["jti"], claims["exp"])
    for _ in range(130):  # past the user policy's burst (100) too: still 401, never 429
        response = await gateway.get("/api/v1/cached", headers=bearer(token))
        await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(orgs.recorder.hits) == 1
    # And none of them was charged to the user: a stolen, revoked token cannot spend its
    # victim's rate limit. The user's fresh token still has the burst left.
    fresh = signer.token("user-11")
    response = await gateway.get("/api/v1/cached", headers=bearer(fresh))
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "rate-limited"])
async def test_token_issued_after_not_before_still_works(
    make_gateway: Any, signer: Signer, redis: Any, redis_prefix: str, limits: bool
) -> None:
    gateway = await make_gateway(ratelimit_enabled=limits)
    now = int(time.time())
    await redis.set(f"{redis_prefix}user:user-3:not_before", str(now - 100), ex=60)
    response = await gateway.get("/api/v1/private", headers=bearer(signer.token("user-3")))
    assert response.status == 200


@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "rate-limited"])
async def test_revocation_fails_closed_when_redis_is_down(
    make_gateway: Any, signer: Signer, orgs: Upstream, limits: bool
) -> None:
    from libs.common.embedded import free_port

    # Rate-limited: the limiter's script cannot judge the token, falls back to its local
    # limits, and the token is judged on its own (and refused: Redis is unreachable).
    gateway = await make_gateway(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", ratelimit_enabled=limits
    )
    for _ in range(2):
        response = await gateway.get("/api/v1/private", headers=bearer(signer.token()))
        await assert_problem(response, 503, "UPSTREAM_UNAVAILABLE")
    assert orgs.recorder.hits == []


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "0x10", "1.5"])
@pytest.mark.parametrize("fast_front", [True, False])
@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "rate-limited"])
async def test_an_unreadable_not_before_refuses_the_token_with_401(
    make_gateway: Any, signer: Signer, redis: Any, redis_prefix: str, orgs: Upstream,
    value: str, fast_front: bool, limits: bool,
) -> None:  # fmt: skip
    # Unreadable means the token cannot be proven good: the same verdict from the script (a
    # rate-limited fast front) as from the gateway's own check, never a 500 and never a 200.
    gateway = await make_gateway(ratelimit_enabled=limits, fast_front=fast_front)
    await redis.set(f"{redis_prefix}user:user-nb:not_before", value, ex=60)
    response = await gateway.get("/api/v1/private", headers=bearer(signer.token("user-nb")))
    await assert_problem(response, 401, "UNAUTHENTICATED")
    assert orgs.recorder.hits == []


async def test_revocation_fails_open_on_a_rate_limited_route_when_asked_to(
    make_gateway: Any, signer: Signer, orgs: Upstream
) -> None:
    from libs.common.embedded import free_port

    gateway = await make_gateway(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", ratelimit_enabled=True,
        revocation_on_error="open",
    )  # fmt: skip
    for _ in range(2):  # the first finds out Redis is gone, the second knows
        response = await gateway.get("/api/v1/private", headers=bearer(signer.token()))
        assert response.status == 200
        assert "RateLimit-Limit" in response.headers  # the local limiter kept limiting
    assert len(orgs.recorder.hits) == 2


async def test_on_a_rate_limited_route_the_limiter_script_checks_the_token(
    make_gateway: Any, signer: Signer, redis_url: str
) -> None:
    gateway = await make_gateway(ratelimit_enabled=True)
    token, claims = revocable(signer, "user-17")

    seen = await Monitor(redis_url, f"revoked:jti:{claims['jti']}").during(
        lambda: get_private(gateway, token, 3)
    )
    # One Redis command per request, the rate-limit script with the token's keys: no MGET.
    assert len(seen) == 3
    assert all(command.upper().startswith("EVALSHA") for command in seen), seen


@pytest.fixture
def api_key(users: Upstream) -> str:
    users.recorder.api_keys[API_KEY] = {
        "key_id": "key-1", "user_id": "user-5", "scopes": ["things:read"], "tier": "pro",
        "roles": ["user"],
    }  # fmt: skip
    return API_KEY


async def test_unknown_api_keys_cannot_grow_the_gateways_memory(
    make_gateway: Any, users: Upstream
) -> None:
    # Each unknown key is remembered as unknown for a few seconds (the users service is not
    # asked again), in the same bounded table as the known ones: random keys evict the oldest.
    gateway = await make_gateway(token_cache_size=5)
    for n in range(12):
        response = await gateway.get("/api/v1/things/1", headers={"X-API-Key": f"pk_random{n}"})
        await assert_problem(response, 401, "UNAUTHENTICATED")
    assert len(gateway.app[GATEWAY].auth.api_keys) <= 5
    again = await gateway.get("/api/v1/things/1", headers={"X-API-Key": "pk_random11"})
    await assert_problem(again, 401, "UNAUTHENTICATED")
    assert users.recorder.resolves == 12  # the newest is still remembered as unknown


async def test_api_key_scopes_are_enforced(
    gateway: Any, api_key: str, orgs: Upstream, users: Upstream
) -> None:
    headers = {"X-API-Key": api_key}
    allowed = await gateway.get("/api/v1/things/1", headers=headers)
    assert allowed.status == 200
    principal = (await allowed.json())["principal"]
    assert principal == {"id": "user-5", "kind": "api_key", "scopes": ["things:read"]}
    await assert_problem(await gateway.put("/api/v1/things/1", headers=headers), 403, "FORBIDDEN")
    await assert_problem(await gateway.get("/api/v1/users-only", headers=headers), 403,
                         "FORBIDDEN")  # fmt: skip
    assert orgs.recorder.paths() == ["/api/v1/things/1"]
    assert users.recorder.resolves == 1


async def test_unknown_or_malformed_api_key_is_401(
    gateway: Any, users: Upstream, orgs: Upstream
) -> None:
    for key in ("pk_unknown_x", "not-a-key", "pk_" + "x" * 500):
        response = await gateway.get("/api/v1/things/1", headers={"X-API-Key": key})
        body = await assert_problem(response, 401, "UNAUTHENTICATED")
        assert key not in orjson.dumps(body).decode()
    assert users.recorder.resolves == 1  # malformed keys never reach the users service
    assert orgs.recorder.hits == []


async def test_api_key_cache_is_invalidated_by_revocation_message(
    gateway: Any, api_key: str, users: Upstream, redis: Any, redis_prefix: str
) -> None:
    headers = {"X-API-Key": api_key}
    assert (await gateway.get("/api/v1/things/1", headers=headers)).status == 200
    assert (await gateway.get("/api/v1/things/1", headers=headers)).status == 200
    assert users.recorder.resolves == 1
    del users.recorder.api_keys[api_key]  # the key is deleted in the users service
    message = orjson.dumps({"kind": "apikey", "value": "key-1"})
    for _ in range(200):
        if await redis.publish(f"{redis_prefix}revocations", message):
            break
        await asyncio.sleep(0.02)  # the gateway's subscription is still starting
    for _ in range(200):
        response = await gateway.get("/api/v1/things/1", headers=headers)
        if response.status == 401:
            break
        await asyncio.sleep(0.02)
    await assert_problem(response, 401, "UNAUTHENTICATED")


async def test_client_identity_headers_never_reach_a_service(
    gateway: Any, signer: Signer, orgs: Upstream
) -> None:
    forged = sign_identity(Principal(id="admin", roles=("admin",)), "guessed-secret")
    sneaky = {
        IDENTITY_HEADER: forged, "X-User-Id": "admin", "X-User-Roles": "admin",
        "X-Principal": "admin", "X-Principal-Id": "admin", "X-Portico-Anything": "x",
        "X-Forwarded-For": "1.2.3.4", "Forwarded": "for=1.2.3.4",
    }  # fmt: skip
    await gateway.get("/api/v1/public", headers=sneaky)
    await gateway.get("/api/v1/private", headers={**sneaky, **bearer(signer.token("u1"))})
    public, private = (hit["headers"] for hit in orgs.recorder.hits)
    lowered = [{k.lower(): v for k, v in h.items()} for h in (public, private)]
    for headers in lowered:
        assert not [k for k in headers if k.startswith(("x-user", "x-principal"))]
        assert "x-portico-anything" not in headers
        assert "forwarded" not in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "x-portico-identity" not in lowered[0]
    assert verify_identity(lowered[1]["x-portico-identity"], TEST_SECRET).id == "u1"
