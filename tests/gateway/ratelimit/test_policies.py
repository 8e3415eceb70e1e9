"""What clients see from the limiter on a healthy shared Redis: GCRA admission, headers, daily
quotas, the tightest of several limits, usage reporting, and the config of the contract."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from gateway.ratelimit import Policy, RateDecision, RateLimitConfig, RateLimitStage
from gateway.routing import parse_route_table
from libs.common.errors import PorticoError, QuotaExceeded, RateLimited
from libs.common.identity import Principal
from tests.gateway.ratelimit.conftest import FakeClock, StageFactory

IP = "203.0.113.7"


def api_key(tier: str, key_id: str = "key-1") -> Principal:
    return Principal(id="user-1", kind="api_key", tier=tier, key_id=key_id)


async def admitted(
    stage: RateLimitStage,
    count: int,
    *,
    route_policy: str | None = None,
    client_ip: str = IP,
    principal: Principal | None = None,
) -> list[RateDecision | None]:
    """Send `count` requests; the decisions of the admitted ones, stopping at the first 429."""
    out: list[RateDecision | None] = []
    for _ in range(count):
        try:
            decision = await stage.evaluate(
                route_policy=route_policy, client_ip=client_ip, principal=principal
            )
        except RateLimited:
            break
        out.append(decision)
    return out


async def test_burst_then_steady_rate_matches_policy(
    make_stage: StageFactory, clock: FakeClock
) -> None:
    stage = await make_stage()  # anonymous: 5 r/s, burst 20
    assert len(await admitted(stage, 100)) == 20
    # Then 10 s at a request every 50 ms: the steady 5 r/s admits 50 (+-1), not 200.
    passed = 0
    for _ in range(200):
        clock.advance(0.05)
        passed += len(await admitted(stage, 1))
    assert 49 <= passed <= 51


async def test_headers_count_down_and_429_says_when_to_retry(
    make_stage: StageFactory, clock: FakeClock
) -> None:
    stage = await make_stage()
    decisions = await admitted(stage, 20)
    headers = [d.headers() for d in decisions if d is not None]
    assert [h["RateLimit-Limit"] for h in headers] == ["20"] * 20
    assert [int(h["RateLimit-Remaining"]) for h in headers] == list(range(19, -1, -1))
    assert [int(h["RateLimit-Reset"]) for h in headers] == [
        -(-(n * 200) // 1000)
        for n in range(1, 21)  # full again after n requests x 200 ms
    ]
    with pytest.raises(RateLimited) as denied:
        await stage.evaluate(route_policy=None, client_ip=IP, principal=None)
    assert denied.value.status == 429
    assert denied.value.code == "RATE_LIMITED"
    assert denied.value.headers == {
        "Retry-After": "1", "RateLimit-Limit": "20", "RateLimit-Remaining": "0",
        "RateLimit-Reset": "4",
    }  # fmt: skip
    clock.advance(0.2)  # one emission interval later exactly one request fits again
    assert len(await admitted(stage, 5)) == 1


async def test_window_edge_double_burst_is_impossible(
    make_stage: StageFactory, clock: FakeClock
) -> None:
    stage = await make_stage()
    clock.now = clock.now - clock.now % 60 + 59.9  # just before a minute (and second) boundary
    assert len(await admitted(stage, 100)) == 20
    clock.advance(0.2)  # across the edge, a fixed window would hand out a second burst of 20
    assert len(await admitted(stage, 100)) == 1
    clock.advance(0.8)  # over any second: burst + rate, never 2 x burst
    assert len(await admitted(stage, 100)) == 4


async def test_clients_and_principals_have_separate_budgets(make_stage: StageFactory) -> None:
    stage = await make_stage()
    assert len(await admitted(stage, 30)) == 20
    assert len(await admitted(stage, 30, client_ip="198.51.100.2")) == 20
    user = Principal(id="user-9")
    decision = await stage.evaluate(route_policy=None, client_ip=IP, principal=user)
    assert decision is not None
    assert decision.headers()["RateLimit-Limit"] == "100"  # user policy, not the IP's
    assert decision.policy == "user"


async def test_tightest_of_several_limits_decides(make_stage: StageFactory) -> None:
    stage = await make_stage()
    # login: 10 per minute per IP, on top of anonymous 5 r/s burst 20.
    decisions = await admitted(stage, 30, route_policy="login")
    assert len(decisions) == 10
    assert [d.headers()["RateLimit-Limit"] for d in decisions if d] == ["10"] * 10
    assert decisions[-1] is not None
    assert decisions[-1].headers()["RateLimit-Remaining"] == "0"
    with pytest.raises(RateLimited) as denied:
        await stage.evaluate(route_policy="login", client_ip=IP, principal=None)
    assert denied.value.headers["Retry-After"] == "6"  # 60 s / 10
    # The login denials did not spend the anonymous budget: 10 used, 10 left.
    assert len(await admitted(stage, 30)) == 10


async def test_quota_exhaustion_gives_quota_exceeded_until_midnight_utc(
    make_stage: StageFactory, clock: FakeClock
) -> None:
    stage = await make_stage(tiers={"tiny": Policy(rate=100, burst=100, daily_quota=5)})
    clock.now = clock.now - clock.now % 86_400 + 86_400 - 60  # 23:59:00 UTC
    key = api_key("tiny")
    decisions = await admitted(stage, 5, principal=key)
    assert [d.headers()["RateLimit-Remaining"] for d in decisions if d] == ["4", "3", "2", "1", "0"]
    assert decisions[0] is not None
    assert decisions[0].headers()["RateLimit-Limit"] == "5"  # the quota is the tighter limit
    with pytest.raises(QuotaExceeded) as denied:
        await stage.evaluate(route_policy=None, client_ip=IP, principal=key)
    assert denied.value.status == 429
    assert denied.value.code == "QUOTA_EXCEEDED"
    assert denied.value.headers["Retry-After"] == "60"
    usage = await stage.usage(principal=key, client_ip=IP)
    assert usage["quota"] == {"limit": 5, "used": 5, "resets_at": "2027-01-16T00:00:00Z"}
    clock.advance(59)
    with pytest.raises(QuotaExceeded):
        await stage.evaluate(route_policy=None, client_ip=IP, principal=key)
    clock.advance(1)  # 00:00:00 UTC: a new day, a new quota
    assert len(await admitted(stage, 1, principal=key)) == 1
    usage = await stage.usage(principal=key, client_ip=IP)
    assert usage["quota"] == {"limit": 5, "used": 1, "resets_at": "2027-01-17T00:00:00Z"}


async def test_a_denied_request_spends_no_quota(make_stage: StageFactory) -> None:
    stage = await make_stage(tiers={"tiny": Policy(rate=1, per=60, burst=2, daily_quota=100)})
    key = api_key("tiny")
    assert len(await admitted(stage, 10, principal=key)) == 2
    usage = await stage.usage(principal=key, client_ip=IP)
    assert usage["quota"]["used"] == 2
    assert usage["rate"] == {"limit": 2, "remaining": 0, "reset": 120}


async def test_tier_change_applies_to_the_next_request(make_stage: StageFactory) -> None:
    stage = await make_stage()
    decision = await stage.evaluate(route_policy=None, client_ip=IP, principal=api_key("free"))
    assert decision is not None
    assert decision.headers()["RateLimit-Limit"] == "20"
    stage.invalidate_tier("key-1")  # nothing cached: a no-op the gateway may still call
    decision = await stage.evaluate(route_policy=None, client_ip=IP, principal=api_key("pro"))
    assert decision is not None
    assert decision.headers()["RateLimit-Limit"] == "200"
    usage = await stage.usage(principal=api_key("pro"), client_ip=IP)
    assert usage["tier"] == "pro"
    assert usage["quota"]["limit"] == 1_000_000
    assert usage["quota"]["used"] == 2  # today's usage follows the key across tiers


async def test_unknown_tier_is_limited_as_the_default_tier(make_stage: StageFactory) -> None:
    stage = await make_stage()
    assert len(await admitted(stage, 50, principal=api_key("platinum"))) == 20


async def test_usage_reports_without_consuming(make_stage: StageFactory) -> None:
    stage = await make_stage()
    enterprise = api_key("enterprise", "key-e")
    for _ in range(3):
        await stage.evaluate(route_policy=None, client_ip=IP, principal=enterprise)
    first = await stage.usage(principal=enterprise, client_ip=IP)
    second = await stage.usage(principal=enterprise, client_ip=IP)
    assert first == second
    assert first["tier"] == "enterprise"
    assert first["rate"]["limit"] == 2000
    assert first["rate"]["remaining"] == 1997
    assert first["quota"]["limit"] is None  # no daily cap, but counted
    assert first["quota"]["used"] == 3
    anonymous = await stage.usage(principal=None, client_ip=IP)
    assert anonymous["tier"] == "anonymous"
    assert anonymous["rate"] == {"limit": 20, "remaining": 20, "reset": 0}


async def test_unknown_route_policy_is_ignored(make_stage: StageFactory) -> None:
    stage = await make_stage()
    decision = await stage.evaluate(route_policy="no-such-policy", client_ip=IP, principal=None)
    assert decision is not None
    assert decision.policy == "anonymous"


def test_defaults_are_the_contract() -> None:
    config = RateLimitConfig()
    assert config.policies["anonymous"] == Policy(rate=5, burst=20)
    assert config.policies["user"] == Policy(rate=50, burst=100, key="principal")
    assert config.policies["login"] == Policy(rate=10, per=60, burst=10)
    assert config.tiers["free"].daily_quota == 10_000
    assert (config.tiers["pro"].rate, config.tiers["pro"].burst) == (100, 200)
    assert config.tiers["pro"].daily_quota == 1_000_000
    assert config.tiers["enterprise"].daily_quota is None
    assert config.failure_mode == "local"
    assert config.redis_timeout <= 0.1


def test_yaml_section_tunes_by_name_and_keeps_the_other_defaults() -> None:
    doc = yaml.safe_load("""
rate_limits:
  failure_mode: closed
  policies:
    login: {rate: 5, per: 60, burst: 5}
    search: {rate: 2, burst: 4, key: principal}
  tiers:
    free: {rate: 1, burst: 2, daily_quota: 10}
routes:
  - {path: /api/v1/auth/login, methods: [POST], upstream: users, auth: none, rate: login}
""")
    table = parse_route_table(doc, upstreams={"users"}, local_handlers=set(),
                             rate_limit_config=RateLimitConfig)  # fmt: skip
    config = table.rate_limits
    assert isinstance(config, RateLimitConfig)
    assert config.failure_mode == "closed"
    assert config.policies["login"].burst == 5
    assert config.policies["search"].key == "principal"
    assert config.policies["anonymous"] == Policy(rate=5, burst=20)
    assert config.tiers["free"].daily_quota == 10
    assert config.tiers["pro"].burst == 200


@pytest.mark.parametrize(
    "section",
    [
        {"failure_mode": "sometimes"},
        {"policies": {"x": {"rate": 0, "burst": 1}}},
        {"policies": {"x": {"rate": 1, "burst": 0}}},
        {"tiers": {"free": {"rate": 1, "burst": 1, "daily_quota": -1}}},
        {"policies": {"x": {"rate": 1, "burst": 1, "bogus": 1}}},
        {"default_tier": "gold"},
        {"redis_timeout": 60},
    ],
)
def test_bad_config_is_refused(section: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RateLimitConfig.model_validate(section)


def test_problem_body_of_a_denial_is_the_contract() -> None:
    error: PorticoError = QuotaExceeded("the daily request quota is used up")
    body = error.to_problem("req-1")
    assert (body["status"], body["code"]) == (429, "QUOTA_EXCEEDED")
