"""The cache's Prometheus metrics (route templates as labels, never raw paths)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["CACHE_ENTRY_BYTES", "CACHE_PURGES", "CACHE_REQUESTS"]

CACHE_REQUESTS = Counter(
    "gateway_cache_requests_total",
    "Requests on cacheable routes, by route template and result (HIT, MISS, STALE, BYPASS)",
    ["route", "result"],
)
CACHE_PURGES = Counter(
    "gateway_cache_purges_total",
    "Cache purges, by what asked for them (tag, write, event, key)",
    ["reason"],
)
CACHE_ENTRY_BYTES = Histogram(
    "gateway_cache_entry_bytes",
    "Size of stored cache entries (body as stored, compressed when large)",
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
