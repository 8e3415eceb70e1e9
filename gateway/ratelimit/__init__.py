"""Gateway rate limits and daily quotas: GCRA in one Redis script, exact across instances.

`RateLimitConfig` is the `rate_limits:` section of routes.yaml; `RateLimitStage.evaluate` decides a
request (raising RateLimited / QuotaExceeded); `RateDecision.headers()` gives RateLimit-* headers.
"""

from gateway.ratelimit.config import FailureMode, Policy, RateLimitConfig
from gateway.ratelimit.stage import RateDecision, RateLimitStage
from gateway.resp import RespClient

__all__ = [
    "FailureMode",
    "Policy",
    "RateDecision",
    "RateLimitConfig",
    "RateLimitStage",
    "RespClient",
]
