"""The rate-limit script judges an access token's revocation keys in the same call: the same
verdicts as `gateway.auth` (unreadable not_before = revoked), nothing charged for a revoked token,
the right keys with an override policy, and when Redis cannot judge, nothing charged either."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.resp import bulk
from gateway.revocation import RevocationKeys, RevocationUnchecked, TokenRevoked
from libs.common.identity import Principal
from tests.gateway.ratelimit.conftest import OwnRedis, StageFactory

USER = Principal(id="u-script", kind="user", roles=("user",), session_id="s1", token_id="j1")


def keys(prefix: str, iat: int, *, sid: bool = True) -> RevocationKeys:
    names = [f"{prefix}revoked:jti:j1".encode(), f"{prefix}user:u-script:not_before".encode()]
    if sid:
        names.append(f"{prefix}revoked:sid:s1".encode())
    return RevocationKeys(b"".join(bulk(k) for k in names), len(names), bulk(b"%d" % iat))


@pytest.mark.parametrize("value", ["nan", "0x10", "inf", "1e999", "1.5", " 12", "-5", ""])
@pytest.mark.parametrize("use_clock", [True, False], ids=["test-clock", "redis-clock"])
async def test_an_unreadable_not_before_is_revoked_in_the_script(
    make_stage: StageFactory, redis_url: str, redis_prefix: str, value: str, use_clock: bool
) -> None:
    stage = await make_stage(use_clock=use_clock)
    admin = aioredis.from_url(redis_url)
    try:
        await admin.set(f"{redis_prefix}user:u-script:not_before", value, ex=60)
        with pytest.raises(TokenRevoked):
            await stage.evaluate(route_policy=None, client_ip="192.0.2.1", principal=USER,
                                 revocation=keys(redis_prefix, int(time.time()) - 10))  # fmt: skip
        assert await admin.get(f"{redis_prefix}r:user:u-script") is None  # nothing charged
    finally:
        await admin.aclose()


@pytest.mark.parametrize(("offset", "revoked"), [(-10, True), (0, False), (10, False)])
async def test_not_before_refuses_tokens_issued_before_it_only(
    make_stage: StageFactory, redis_url: str, redis_prefix: str, offset: int, revoked: bool
) -> None:
    stage = await make_stage(use_clock=False)
    now = int(time.time())
    admin = aioredis.from_url(redis_url)
    try:
        await admin.set(f"{redis_prefix}user:u-script:not_before", str(now), ex=60)
    finally:
        await admin.aclose()
    call = stage.evaluate(route_policy=None, client_ip="192.0.2.1", principal=USER,
                          revocation=keys(redis_prefix, now + offset))  # fmt: skip
    if revoked:
        with pytest.raises(TokenRevoked):
            await call
    else:
        assert await call is not None


async def test_an_override_route_charges_its_quota_but_not_for_a_revoked_token(
    make_stage: StageFactory, redis_url: str, redis_prefix: str
) -> None:
    # user (rate) + a by-IP override with a daily quota (rate + quota) = 3 limit keys, then the
    # token's 3 revocation keys.
    stage = await make_stage(
        use_clock=False,
        policies={"login": {"rate": 10, "per": 60, "burst": 3, "daily_quota": 5}},
    )
    iat = int(time.time()) - 10
    decision = None
    for _ in range(3):
        decision = await stage.evaluate(
            route_policy="login", client_ip="192.0.2.2", principal=USER,
            revocation=keys(redis_prefix, iat),
        )  # fmt: skip
    assert decision is not None
    assert (decision.policy, decision.limit, decision.remaining) == ("login", 3, 0)
    admin = aioredis.from_url(redis_url)
    try:
        await admin.set(f"{redis_prefix}revoked:sid:s1", "1", ex=60)
        with pytest.raises(TokenRevoked):
            await stage.evaluate(route_policy="login", client_ip="192.0.2.2", principal=USER,
                                 revocation=keys(redis_prefix, iat))  # fmt: skip
        day = int(time.time()) // 86400
        assert await admin.get(f"{redis_prefix}q:login:192.0.2.2:{day}") == b"3"
    finally:
        await admin.aclose()


async def test_a_flushed_script_is_reloaded_and_still_refuses_a_revoked_token(
    make_stage: StageFactory, own_redis: OwnRedis
) -> None:
    stage = await make_stage(url=own_redis.url, use_clock=False, key_prefix="a:")
    iat = int(time.time()) - 10
    assert await stage.evaluate(route_policy=None, client_ip="x", principal=USER,
                                revocation=keys("a:", iat)) is not None  # fmt: skip
    admin = aioredis.from_url(own_redis.url)
    try:
        await admin.script_flush()
        await admin.set("a:revoked:jti:j1", "1")
        before = await admin.get("a:r:user:u-script")
        with pytest.raises(TokenRevoked):
            await stage.evaluate(route_policy=None, client_ip="x", principal=USER,
                                 revocation=keys("a:", iat))  # fmt: skip
        assert await admin.get("a:r:user:u-script") == before
        assert stage.mode == "redis"
    finally:
        await admin.aclose()


async def test_without_redis_the_token_is_handed_back_and_charged_once_locally(
    make_stage: StageFactory, own_redis: OwnRedis
) -> None:
    stage = await make_stage(
        url=own_redis.url, use_clock=False, key_prefix="b:", probe_initial=0.05,
        policies={"user": {"rate": 1, "per": 60, "burst": 2, "key": "principal"}},
    )  # fmt: skip
    own_redis.stop()
    iat = int(time.time()) - 10
    for _ in range(3):  # never charged while unchecked
        with pytest.raises(RevocationUnchecked):
            await stage.evaluate(route_policy=None, client_ip="x", principal=USER,
                                 revocation=keys("b:", iat))  # fmt: skip
    assert stage.mode == "local"
    first = await stage.evaluate(route_policy=None, client_ip="x", principal=USER)
    second = await stage.evaluate(route_policy=None, client_ip="x", principal=USER)
    assert first is not None
    assert second is not None
    assert (first.remaining, second.remaining) == (1, 0)
