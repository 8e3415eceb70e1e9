"""Prometheus metrics of the rate limiter (created once at import, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["BACKEND_ERRORS", "DECISIONS", "DECISION_SECONDS", "MODE", "MODES"]

DECISIONS = Counter(
    "gateway_ratelimit_decisions_total",
    "Rate-limit decisions by deciding policy and result "
    "(allowed, rate_limited, quota_exceeded, bypassed, unavailable)",
    ["policy", "result"],
)
BACKEND_ERRORS = Counter(
    "gateway_ratelimit_backend_errors_total",
    "Redis calls of the rate limiter that failed or timed out",
)
DECISION_SECONDS = Histogram(
    "gateway_ratelimit_decision_seconds",
    "Time to decide the rate limits of one request",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
MODES = ("redis", "local", "open", "closed")
MODE = Gauge(
    "gateway_ratelimit_mode",
    "1 for the limiter's current backend mode: redis (shared), or local/open/closed while "
    "Redis is unreachable",
    ["mode"],
)
