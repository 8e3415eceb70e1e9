"""The cache stage: lookup, HIT/STALE serving, single-flight fill, storing and tag purges.

Redis layout under `key_prefix`: `cache:e:<hash>` entries (binary, see entry.py), `cache:l:<hash>`
fill locks (SET NX PX), `cache:t:<tag>` sets of entry keys, `cache:p:<tag>` the purge epoch of a
tag (so a fill that raced a purge is not stored) and `cache:epoch`, the purge counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from multidict import CIMultiDict
from redis.exceptions import RedisError

from gateway.cache.entry import BufferedResponse, Entry, decode_entry, encode_entry
from gateway.cache.l1 import L1
from gateway.cache.metrics import CACHE_ENTRY_BYTES, CACHE_PURGES, CACHE_REQUESTS
from gateway.cache.policy import CachePolicy
from gateway.cache.scripts import PURGE_LUA, RELEASE_LUA, STORE_LUA
from gateway.cache.storable import (
    DROPPED_HEADERS,
    NOT_MODIFIED_HEADERS,
    accepts_gzip,
    build_entry,
    etag_matches,
    etag_of,
    gunzip_body,
    off_loop,
)
from gateway.cache.tags import surrogate_keys, tags_for_event
from libs.common.errors import UpstreamTimeout, UpstreamUnavailable
from libs.common.events import Event
from libs.common.identity import Principal

__all__ = ["CacheStage", "EntryReader", "Probe"]

_log = structlog.get_logger("portico.gateway.cache")

_STALE_ERRORS = (UpstreamUnavailable, UpstreamTimeout)
_SERVER_ERRORS = frozenset({500, 502, 503, 504})
# Redis trouble degrades the cache to a pass-through; it never fails a request by itself.
_REDIS_ERRORS = (RedisError, ConnectionError, TimeoutError, OSError)
_MEMO_ENTRIES = 1024
_MEMO_MAX_BYTES = 64 * 1024


class EntryReader(Protocol):
    """A fast MGET path to Redis (the gateway's pipelined `MGetClient`)."""

    def mget(self, keys: tuple[bytes, ...]) -> Awaitable[list[bytes | None]]: ...


def _revalidates(request: web.Request) -> bool:
    """The client asks for a fresh answer (`Cache-Control: no-cache`, HTTP/1.0 `Pragma`)."""
    headers = request.headers
    return "no-cache" in headers.get("Cache-Control", "").lower() or (
        "no-cache" in headers.get("Pragma", "").lower()
    )


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@dataclass(slots=True)
class Probe:
    """What `CacheStage.probe` looked up, handed on to `handle` so it does not look again."""

    key: str
    entry: Entry | None
    error: Exception | None = None  # Redis failed: `handle` bypasses without asking again


class CacheStage:
    """The gateway's response cache for GET/HEAD on routes with a `cache:` policy."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str = "portico:",
        clock: Callable[[], float] = time.time,
        l1_bytes: int = 0,
        l1_ttl: float = 1.0,
        lock_ttl: float = 10.0,
        lock_poll: float = 0.01,
        reader: EntryReader | None = None,
    ) -> None:
        self._redis = redis
        # redis.asyncio costs ~100+ us of CPU per command; the HIT path may use a leaner reader.
        self._reader = reader
        self._clock = clock
        self._entries = f"{key_prefix}cache:e:"
        self._locks = f"{key_prefix}cache:l:"
        self._tags = f"{key_prefix}cache:t:"
        self._marks = f"{key_prefix}cache:p:"
        self._epoch = f"{key_prefix}cache:epoch"
        self._channel = f"{key_prefix}cache:purged"
        self._lock_ms = int(lock_ttl * 1000)
        self._lock_poll = lock_poll
        # A purge mark must outlive any fill that started before the purge.
        self._mark_ms = self._lock_ms + 60_000
        self._l1 = L1(l1_bytes, l1_ttl) if l1_bytes > 0 else None
        # The L1 is only used while `listen()` is subscribed to the purge channel: without it,
        # a purge made by another instance would not reach this one.
        self._l1_live = False
        self._store = redis.register_script(STORE_LUA)
        self._purge = redis.register_script(PURGE_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._flights: dict[str, asyncio.Task[Entry | BufferedResponse]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._counters: dict[tuple[str, str], Any] = {}
        self._decoded: dict[str, tuple[bytes, Entry]] = {}

    async def aclose(self) -> None:
        """Cancel and await background refreshes and fills (gateway shutdown)."""
        tasks = [*self._background, *self._flights.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # --- the request path -------------------------------------------------------------------

    async def handle(
        self,
        request: web.Request,
        *,
        policy: CachePolicy,
        principal: Principal | None,
        fetch: Callable[[], Awaitable[BufferedResponse]],
        route: str | None = None,
        probe: Probe | None = None,
    ) -> web.StreamResponse:
        """Answer a GET/HEAD from the cache, or through one single-flight `fetch` per key
        (`probe`: what `probe()` already looked up for this request)."""
        label = route if route is not None else _route_label(request)
        if request.method not in ("GET", "HEAD") or (
            policy.scope == "private" and principal is None
        ):
            return await self._respond(request, await fetch(), "BYPASS", label)
        key = probe.key if probe is not None else self.key_for(request, policy, principal)
        revalidate = _revalidates(request)
        entry: Entry | None = None
        if not revalidate:
            try:
                if probe is not None and probe.error is not None:
                    raise probe.error
                entry = probe.entry if probe is not None else await self._lookup(key)
            except _REDIS_ERRORS as exc:
                _log.warning("cache_unavailable", route=label, error=type(exc).__name__)
                return await self._respond(request, await fetch(), "BYPASS", label)
            if entry is not None:
                age = self._clock() - entry.stored_at
                if age < entry.ttl:
                    return await self._serve(request, entry, "HIT", label, age)
                if age < entry.ttl + policy.stale_while_revalidate:
                    self._refresh(key, policy, fetch)
                    return await self._serve(request, entry, "STALE", label, age)
        try:
            result = await self._fill(key, policy, fetch)
        except _STALE_ERRORS:
            stale = await self._usable_stale(key, entry, policy)
            if stale is None:
                raise
            _log.warning("cache_stale_if_error", route=label)
            return await self._serve(
                request, stale, "STALE", label, self._clock() - stale.stored_at
            )
        if isinstance(result, Entry):
            return await self._serve(request, result, "MISS", label, 0.0)
        if result.status in _SERVER_ERRORS:
            # RFC 5861 section 4: stale-if-error also covers 500/502/503/504 answers.
            stale = await self._usable_stale(key, entry, policy)
            if stale is not None:
                _log.warning("cache_stale_if_error", route=label, status=result.status)
                age = self._clock() - stale.stored_at
                return await self._serve(request, stale, "STALE", label, age)
        return await self._respond(request, result, "MISS", label)

    async def probe(
        self, request: web.Request, policy: CachePolicy, principal: Principal | None, label: str
    ) -> tuple[Entry, int] | Probe | None:
        """The fast front end's HIT: `(entry, age)` when the entry answers this request as it
        is stored (fresh, no conditional, an encoding the client takes; the caller counts it with
        `count_hit` once it answers with it), else
        what was looked up for `handle(probe=...)`, or None when `handle` must do it all."""
        if request.method not in ("GET", "HEAD") or (
            policy.scope == "private" and principal is None
        ):
            return None
        key = self.key_for(request, policy, principal)
        if _revalidates(request):
            return Probe(key, None)
        try:
            entry = await self._lookup(key)
        except _REDIS_ERRORS as exc:
            return Probe(key, None, error=exc)
        if entry is None:
            return Probe(key, None)
        age = self._clock() - entry.stored_at
        if (
            age < entry.ttl
            and "If-None-Match" not in request.headers
            and (not entry.gzipped or accepts_gzip(request))
            and entry.wire_headers() is not None
        ):
            return entry, max(0, int(age))
        return Probe(key, entry)

    async def _usable_stale(
        self, key: str, entry: Entry | None, policy: CachePolicy
    ) -> Entry | None:
        """The entry still inside its stale-if-error window, if any."""
        if policy.stale_if_error <= 0:
            return None
        if entry is None:
            with contextlib.suppress(*_REDIS_ERRORS):
                entry = await self._lookup(key)
        if (
            entry is not None
            and self._clock() - entry.stored_at < entry.ttl + policy.stale_if_error
        ):
            return entry
        return None

    def key_for(
        self, request: web.Request, policy: CachePolicy, principal: Principal | None
    ) -> str:
        """The entry key: path, selected query (sorted), vary headers and scope; HEAD = GET."""
        query = request.query
        if policy.vary_query == "*":
            params = sorted(query.items())
        else:
            wanted = policy.vary_query
            params = sorted((k, v) for k, v in query.items() if k in wanted)
        headers = request.headers
        varied = [headers.getall(name, []) for name in policy.vary_headers]
        scope = (
            "*"
            if policy.scope == "public" or principal is None
            else (f"{principal.kind}:{principal.id}")
        )
        material = orjson.dumps([request.path, params, varied, scope])
        return hashlib.blake2b(material, digest_size=16).hexdigest()

    async def _lookup(self, key: str) -> Entry | None:
        if self._l1 is not None and self._l1_live:
            entry = self._l1.get(key)
            if entry is not None:
                return entry
        raw: Any
        if self._reader is not None:
            raw = (await self._reader.mget(((self._entries + key).encode(),)))[0]
        else:
            raw = await self._redis.get(self._entries + key)
        if not isinstance(raw, bytes):
            return None
        # Hot keys come back byte-identical: reuse their decoded entry (and prepared headers).
        # Redis stays the source of truth, so this memo can never serve a purged entry.
        memo = self._decoded.get(key)
        if memo is not None and memo[0] == raw:
            return memo[1]
        entry = decode_entry(raw)
        if entry is not None and len(raw) <= _MEMO_MAX_BYTES:
            if len(self._decoded) >= _MEMO_ENTRIES:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[key] = (raw, entry)
        if entry is not None and self._l1 is not None and self._l1_live:
            self._l1.put(key, entry)
        return entry

    async def _serve(
        self, request: web.Request, entry: Entry, result: str, label: str, age: float
    ) -> web.Response:
        self._count(label, result)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and etag_matches(if_none_match, entry.etag):
            headers = CIMultiDict(
                (name, value)
                for name, value in entry.headers
                if name.lower() in NOT_MODIFIED_HEADERS
            )
            headers["X-Cache-Status"] = result
            return web.Response(status=304, headers=headers)
        headers = entry.response_headers()
        headers["X-Cache-Status"] = result
        headers["Age"] = str(max(0, int(age)))
        body = entry.body
        if entry.gzipped:
            if accepts_gzip(request):
                headers["Content-Encoding"] = "gzip"
            else:
                body = await off_loop(gunzip_body, body)
        return web.Response(status=entry.status, body=body, headers=headers)

    async def _respond(
        self, request: web.Request, response: BufferedResponse, result: str, label: str
    ) -> web.Response:
        """An answer that was not (or may not be) stored, as the upstream sent it."""
        self._count(label, result)
        headers: CIMultiDict[str] = CIMultiDict()
        etag: str | None = None
        for name, value in response.headers:
            lower = name.lower()
            if lower == "etag":
                etag = value
            elif lower not in DROPPED_HEADERS or lower in ("set-cookie", "content-encoding"):
                headers.add(name, value)
        headers["ETag"] = etag or etag_of(response.body)
        headers["X-Cache-Status"] = result
        return web.Response(status=response.status, body=response.body, headers=headers)

    def count_hit(self, label: str) -> None:
        """A HIT answered from what `probe` handed over."""
        self._count(label, "HIT")

    def _count(self, label: str, result: str) -> None:
        counter = self._counters.get((label, result))
        if counter is None:
            counter = self._counters[(label, result)] = CACHE_REQUESTS.labels(label, result)
        counter.inc()

    # --- filling ----------------------------------------------------------------------------

    async def _fill(
        self,
        key: str,
        policy: CachePolicy,
        fetch: Callable[[], Awaitable[BufferedResponse]],
    ) -> Entry | BufferedResponse:
        """One fill per key in this process; the fill itself takes the cross-instance lock.
        The fill runs in its own task so a client hanging up does not abort it for the others."""
        flight = self._flights.get(key)
        if flight is not None:
            result = await asyncio.shield(flight)
            if isinstance(result, Entry):
                return result
            # Not storable, so not shareable either (it may carry a cookie): fetch our own.
            return await fetch()
        flight = asyncio.get_running_loop().create_task(self._fill_once(key, policy, fetch))
        self._flights[key] = flight
        flight.add_done_callback(lambda task: self._landed(key, task))
        return await asyncio.shield(flight)

    def _landed(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _fill_once(
        self,
        key: str,
        policy: CachePolicy,
        fetch: Callable[[], Awaitable[BufferedResponse]],
    ) -> Entry | BufferedResponse:
        lock = self._locks + key
        token = os.urandom(8).hex()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                # Queued, not awaited: execute() sends both in one round trip.
                _ = pipe.set(lock, token, nx=True, px=self._lock_ms)
                _ = pipe.get(self._epoch)
                locked, epoch = await pipe.execute()
        except _REDIS_ERRORS:
            return await fetch()  # no lock, no epoch: fetch, and store nothing
        if not locked:
            # Another instance is filling this key: wait for its entry rather than stampede.
            entry = await self._await_peer(key)
            if entry is not None:
                return entry
            token = ""  # it stored nothing (or took too long): fetch, without the lock
        stored = False
        try:
            response = await fetch()
            entry = await build_entry(response, policy, now=self._clock())
            if entry is None:
                return response
            tags = entry.tags
            blob = encode_entry(entry)
            px = max(1, int((entry.ttl + policy.keep_seconds) * 1000))
            try:
                stored = bool(
                    await self._store(
                        keys=[self._entries + key, lock],
                        args=[blob, px, token, int(epoch or 0), self._marks, self._tags, *tags],
                    )
                )
            except _REDIS_ERRORS as exc:
                _log.warning("cache_store_failed", error=type(exc).__name__)
                return entry
            if stored:
                CACHE_ENTRY_BYTES.observe(len(blob))
                if self._l1 is not None and self._l1_live:
                    self._l1.put(key, entry)
            return entry
        finally:
            if token and not stored:
                with contextlib.suppress(Exception):
                    await self._release(keys=[lock], args=[token])

    async def _await_peer(self, key: str) -> Entry | None:
        deadline = time.monotonic() + self._lock_ms / 1000
        entry_key, lock = self._entries + key, self._locks + key
        while time.monotonic() < deadline:
            await asyncio.sleep(self._lock_poll)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    _ = pipe.get(entry_key)
                    _ = pipe.exists(lock)
                    raw, held = await pipe.execute()
            except _REDIS_ERRORS:
                return None
            if isinstance(raw, bytes):
                entry = decode_entry(raw)
                if entry is not None and self._clock() - entry.stored_at < entry.ttl:
                    return entry
            if not held:
                return None
        return None

    def _refresh(
        self,
        key: str,
        policy: CachePolicy,
        fetch: Callable[[], Awaitable[BufferedResponse]],
    ) -> None:
        """stale-while-revalidate: one background fill per key (single-flight like a miss)."""
        if key in self._flights:
            return

        async def refresh() -> None:
            with contextlib.suppress(Exception):
                await self._fill(key, policy, fetch)

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- invalidation -----------------------------------------------------------------------

    async def purge_tags(self, tags: Iterable[str], *, reason: str = "tag") -> int:
        """Delete every entry tagged with any of `tags`; returns how many entries went."""
        tags = [tag for tag in dict.fromkeys(tags) if tag]
        if not tags:
            return 0
        if self._l1 is not None:
            self._l1.purge_tags(tags)
        deleted = int(
            await self._purge(
                keys=[self._epoch, self._channel],
                args=[self._tags, self._marks, self._mark_ms, *tags],
            )
        )
        CACHE_PURGES.labels(reason).inc()
        return deleted

    async def purge_after_write(
        self, response_headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        """A write passed through the gateway: purge the tags its response names."""
        tags = surrogate_keys(response_headers)
        if tags:
            try:
                await self.purge_tags(tags, reason="write")
            except _REDIS_ERRORS as exc:
                # The write happened; failing its response would invite a retry. Entries in
                # this process's L1 are already gone, and the event purge follows.
                _log.warning("cache_purge_failed", tags=len(tags), error=type(exc).__name__)

    async def purge_event(self, event: Event) -> int:
        """A bus event: purge the tags named by its ids (every gateway instance consumes it)."""
        return await self.purge_tags(tags_for_event(event), reason="event")

    async def purge_key(self, key: str) -> bool:
        """Delete one entry by key (its hash, or the full Redis key); admin purge endpoint."""
        key = key.removeprefix(self._entries)
        if self._l1 is not None:
            self._l1.discard(key)
        async with self._redis.pipeline(transaction=False) as pipe:
            _ = pipe.delete(self._entries + key)
            _ = pipe.publish(self._channel, f"k {key}")
            deleted, _receivers = await pipe.execute()
        CACHE_PURGES.labels("key").inc()
        return int(deleted) > 0

    async def listen(self, *, ready: asyncio.Event | None = None) -> None:
        """Apply purges made by any instance to this one's L1; run it as an owned task while the
        L1 is enabled (`ctx()`). The L1 is bypassed whenever the subscription is down."""
        if self._l1 is None:
            return
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._l1.clear()  # purges made while unsubscribed were missed
                    self._l1_live = True
                    if ready is not None:
                        ready.set()
                    while True:
                        # Short waits: the shared client's socket timeout must not fire first.
                        message = await pubsub.get_message(timeout=0.2)
                        if message is not None:
                            self._on_purged(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: no L1 until we are subscribed again
                _log.warning("cache_purge_channel_lost", error=type(exc).__name__)
            finally:
                self._l1_live = False
                self._l1.clear()
            await asyncio.sleep(1.0)

    def _on_purged(self, data: Any) -> None:
        if self._l1 is None or not isinstance(data, bytes):
            return
        kind, _, rest = data.decode(errors="replace").partition(" ")
        if kind == "t":
            self._l1.purge_tags(rest.split())
        elif kind == "k":
            self._l1.discard(rest)

    def ctx(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """cleanup_ctx: run `listen()` (when the L1 is on), and `aclose()` on shutdown."""

        async def ctx(_: web.Application) -> AsyncIterator[None]:
            task = asyncio.get_running_loop().create_task(self.listen(), name="gateway-cache-l1")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.aclose()

        return ctx
