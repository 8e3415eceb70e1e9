"""The `rate_limits:` section of routes.yaml: named policies, API-key tiers and Redis behaviour.

Validated once at load time; the stage turns it into precomputed, pydantic-free plans so the hot
path does no model work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_POLICIES", "DEFAULT_TIERS", "FailureMode", "Policy", "RateLimitConfig"]

FailureMode = Literal["local", "open", "closed"]


class Policy(BaseModel):
    """`rate` requests per `per` seconds, absorbing bursts of up to `burst` requests (GCRA),
    plus an optional number of requests per UTC day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(gt=0)
    per: float = Field(default=1.0, gt=0)
    burst: int = Field(ge=1)
    daily_quota: int | None = Field(default=None, ge=1)
    # What a route override counts by: the client IP (login) or the caller (IP when anonymous).
    key: Literal["ip", "principal"] = "ip"

    @property
    def interval(self) -> float:
        """Seconds between two requests at the steady rate (GCRA emission interval)."""
        return self.per / self.rate


# DESIGN.md "Rate limits and quotas" defaults; YAML entries replace these by name.
DEFAULT_POLICIES: dict[str, Policy] = {
    "anonymous": Policy(rate=5, burst=20),
    "user": Policy(rate=50, burst=100, key="principal"),
    "login": Policy(rate=10, per=60, burst=10),
}
DEFAULT_TIERS: dict[str, Policy] = {
    "free": Policy(rate=10, burst=20, daily_quota=10_000, key="principal"),
    "pro": Policy(rate=100, burst=200, daily_quota=1_000_000, key="principal"),
    "enterprise": Policy(rate=1_000, burst=2_000, key="principal"),
}


class RateLimitConfig(BaseModel):
    """Rate-limit policies and how to behave when Redis is unreachable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `anonymous` (per IP) and `user` (per user) always exist; other names are route overrides
    # (`rate: login` on a route).
    policies: dict[str, Policy] = Field(default_factory=lambda: dict(DEFAULT_POLICIES))
    tiers: dict[str, Policy] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    # An API key whose tier is unknown here is limited as this tier (never unlimited).
    default_tier: str = "free"
    failure_mode: FailureMode = "local"
    # A slow Redis must not stall requests: past this the decision is made without it.
    redis_timeout: float = Field(default=0.075, gt=0, le=5)
    key_prefix: str = "portico:rl:"
    # While Redis is down, one request probes it after `probe_initial` s, doubling to `probe_max`.
    probe_initial: float = Field(default=0.5, gt=0)
    probe_max: float = Field(default=10.0, gt=0)
    # Bound on the in-process limiter's table (oldest entries go first when full).
    local_max_keys: int = Field(default=100_000, ge=100)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        # A YAML that tunes `login` must not silently drop the anonymous/user/tier defaults.
        if isinstance(data, dict):
            data = dict(data)
            for name, defaults in (("policies", DEFAULT_POLICIES), ("tiers", DEFAULT_TIERS)):
                given = data.get(name)
                if isinstance(given, dict):
                    data[name] = {**defaults, **given}
        return data

    @model_validator(mode="after")
    def _check(self) -> RateLimitConfig:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not one of the tiers")
        if self.probe_max < self.probe_initial:
            raise ValueError("probe_max must be >= probe_initial")
        return self
