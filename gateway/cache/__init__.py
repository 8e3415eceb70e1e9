"""The gateway's response cache: Redis entries, ETag/304, stale serving, single-flight fills and
tag purges (see DESIGN.md "Cache" and README "Cache")."""

from gateway.cache.entry import BufferedResponse, Entry
from gateway.cache.metrics import CACHE_ENTRY_BYTES, CACHE_PURGES, CACHE_REQUESTS
from gateway.cache.policy import CachePolicy
from gateway.cache.stage import CacheStage, EntryReader
from gateway.cache.tags import surrogate_keys, tags_for_event

__all__ = [
    "CACHE_ENTRY_BYTES",
    "CACHE_PURGES",
    "CACHE_REQUESTS",
    "BufferedResponse",
    "CachePolicy",
    "CacheStage",
    "Entry",
    "EntryReader",
    "surrogate_keys",
    "tags_for_event",
]
