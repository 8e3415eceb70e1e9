"""Prometheus metrics shared by every process, and the `/metrics` handler.

Metric objects live in the default registry and are created once at import, so several apps in one
process (tests) share them. Labels use route *templates*, never raw paths (bounded cardinality).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

__all__ = [
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "LATENCY_BUCKETS",
    "metrics_handler",
]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests handled, by route template, method and status",
    ["service", "route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to handle an HTTP request, by route template, method and status",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)


async def metrics_handler(_: web.Request) -> web.Response:
    """Expose the default registry in Prometheus text format."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
