"""A small in-process LRU in front of Redis, bounded by bytes, with a local tag index so purges
reach it. Purges made by other instances arrive over Redis pub/sub (`CacheStage.listen`); `ttl`
bounds how long an entry can live here in any case."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from gateway.cache.entry import Entry

__all__ = ["L1"]


class L1:
    def __init__(self, max_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._items: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._tags: dict[str, set[str]] = {}
        self._bytes = 0

    def get(self, key: str) -> Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] < time.monotonic():
            self.discard(key)
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes // 4:
            return
        self.discard(key)
        self._items[key] = (entry, time.monotonic() + self.ttl)
        self._bytes += size
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(key)
        while self._bytes > self.max_bytes and self._items:
            self.discard(next(iter(self._items)))

    def discard(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        self._bytes -= item[0].size
        for tag in item[0].tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

    def clear(self) -> None:
        self._items.clear()
        self._tags.clear()
        self._bytes = 0

    def purge_tags(self, tags: Iterable[str]) -> None:
        for tag in tags:
            for key in list(self._tags.get(tag, ())):
                self.discard(key)
