"""The gateway's rate-limit stage: which limits apply to a request, one EVALSHA for all of them,
the tightest decides.

Everything that does not depend on the request (key prefixes, the script's per-limit arguments,
metric children) is computed once per policy at construction; a decision builds the RESP command
from bytes and parses a flat integer reply, with no pydantic and no redis.asyncio in the path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog

from gateway.ratelimit.config import Policy, RateLimitConfig
from gateway.ratelimit.local import DAY_US, LocalLimiter
from gateway.ratelimit.metrics import BACKEND_ERRORS, DECISION_SECONDS, DECISIONS, MODE, MODES
from gateway.ratelimit.script import SCRIPT, SCRIPT_SHA
from gateway.resp import ReplyError, RespClient, bulk, command
from gateway.revocation import RevocationKeys, RevocationUnchecked, TokenRevoked
from gateway.tally import CountTally, DurationTally
from libs.common.errors import QuotaExceeded, RateLimited, UpstreamUnavailable
from libs.common.identity import Principal

__all__ = ["RateDecision", "RateLimitStage"]

_log = structlog.get_logger("portico.gateway.ratelimit")
_EVALSHA = bulk(b"EVALSHA") + bulk(SCRIPT_SHA)
_CONSUME, _PEEK = bulk(b"1"), bulk(b"0")
_SERVER_TIME = bulk(b"")
_NO_REVOCATION = bulk(b"0") + bulk(b"0")
_TIER_KEY = "key"  # all tiers share a key's counters, so a tier change keeps today's usage


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us more per request
class RateDecision:
    """The tightest applicable limit after an admitted request (RateLimit-* header values)."""

    policy: str
    limit: int
    remaining: int
    reset: int  # seconds until the limit is fully replenished

    def headers(self) -> dict[str, str]:
        return dict(self.header_items())

    def header_items(self) -> list[tuple[str, str]]:
        return [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset)),
        ]


class _Limit:
    """One rate limit or daily counter of a policy, with its precomputed wire form."""

    __slots__ = ("argv", "is_quota", "limit", "prefix", "spec")

    def __init__(self, prefix: str, spec: tuple[bytes, int, int], limit: int) -> None:
        self.prefix = prefix.encode()
        self.spec = spec
        self.argv = b"".join(bulk(b"%s" % part if isinstance(part, bytes) else b"%d" % part)
                             for part in spec)  # fmt: skip
        self.is_quota = spec[0] == b"q"
        self.limit = limit


class _Plan:
    """A policy compiled for the hot path."""

    __slots__ = ("allowed_key", "by_ip", "limits", "metrics", "name", "policy")

    def __init__(self, name: str, policy: Policy, key_prefix: str, *, key_name: str,
                 count_always: bool) -> None:  # fmt: skip
        self.name = name
        self.policy = policy
        self.by_ip = policy.key == "ip"
        interval_us = max(1, round(policy.interval * 1_000_000))
        limits = [_Limit(f"{key_prefix}r:{key_name}:", (b"r", interval_us, policy.burst),
                         policy.burst)]  # fmt: skip
        if policy.daily_quota is not None or count_always:
            quota = policy.daily_quota or 0
            limits.append(_Limit(f"{key_prefix}q:{key_name}:", (b"q", quota, 0), quota))
        self.limits = tuple(limits)
        self.allowed_key = (name, "allowed")
        self.metrics = {
            result: DECISIONS.labels(policy=name, result=result)
            for result in ("allowed", "rate_limited", "quota_exceeded", "bypassed", "unavailable")
        }


class _Compiled:
    """The limits that apply to one (route policy, client IP, caller), with the script call
    that consumes them serialised once: a decision builds nothing but its answer."""

    __slots__ = (
        "argv", "consume", "keys", "keys_blob", "limits", "owners", "plans", "specs", "with_token",
    )  # fmt: skip

    def __init__(self, plans: list[tuple[_Plan, str]]) -> None:
        limits: list[_Limit] = []
        keys: list[bytes] = []
        owners: list[_Plan] = []
        for plan, ident in plans:
            raw = ident.encode()
            for limit in plan.limits:
                limits.append(limit)
                keys.append(limit.prefix + raw)
                owners.append(plan)
        self.plans = plans
        self.limits = tuple(limits)
        self.keys = tuple(keys)
        self.owners = tuple(owners)
        self.specs = [limit.spec for limit in limits]
        self.keys_blob = b"".join(bulk(key) for key in keys)
        self.argv = b"".join(limit.argv for limit in limits)
        self.consume = self.payload(_SERVER_TIME, consume=True)
        # The consuming call with a token's revocation keys, per token (a caller has a few); keyed
        # by the keys' and iat's bytes (their hashes are cached; a dataclass's is computed).
        self.with_token: dict[tuple[bytes, bytes], bytes] = {}

    def consume_with(self, revocation: RevocationKeys) -> bytes:
        key = (revocation.blob, revocation.iat)
        payload = self.with_token.get(key)
        if payload is None:
            if len(self.with_token) >= 8:
                self.with_token.clear()
            payload = self.with_token[key] = self.payload(
                _SERVER_TIME, consume=True, revocation=revocation
            )
        return payload

    def payload(self, now: bytes, *, consume: bool, revocation: RevocationKeys | None = None
                ) -> bytes:  # fmt: skip
        count = len(self.keys)
        if revocation is None:
            return b"".join((
                b"*%d\r\n" % (7 + 4 * count), _EVALSHA, bulk(b"%d" % count), self.keys_blob, now,
                _CONSUME if consume else _PEEK, _NO_REVOCATION, self.argv,
            ))  # fmt: skip
        total = count + revocation.count
        return b"".join((
            b"*%d\r\n" % (7 + 4 * count + revocation.count), _EVALSHA, bulk(b"%d" % total),
            self.keys_blob, revocation.blob, now, _CONSUME if consume else _PEEK,
            bulk(b"%d" % revocation.count), revocation.iat, self.argv,
        ))  # fmt: skip


_MAX_COMPILED = 10_000


def _admitted(reply: list[int]) -> list[int]:
    """The script's reply, unless it found the token revoked ({-1}, nothing charged)."""
    if reply[0] == -1:
        raise TokenRevoked()
    return reply


def _redis_client(redis: str | aioredis.Redis | RespClient, timeout: float) -> RespClient:
    if isinstance(redis, RespClient):
        return redis
    if isinstance(redis, str):
        return RespClient.from_url(redis, timeout=timeout)
    # A redis.asyncio client: reuse its address, but not its (slow, per-command) machinery.
    kwargs: dict[str, Any] = redis.connection_pool.connection_kwargs
    return RespClient(
        str(kwargs.get("host", "127.0.0.1")),
        int(kwargs.get("port", 6379)),
        db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        timeout=timeout,
    )


# `gateway_ratelimit_decision_seconds`, batched (Histogram.observe costs ~2 us a call), and
# the "allowed" decisions (every other result is rare enough for Counter.inc).
_DECISION_TALLY = DurationTally(DECISION_SECONDS)
_ALLOWED_TALLY = CountTally(DECISIONS)


class RateLimitStage:
    """Decides per request from `config`, sharing state through Redis (exact across instances).

    `redis` is a URL, a redis.asyncio client (only its address is used) or a `RespClient`.
    `clock` (unix seconds) replaces the Redis server's TIME — for tests; in production all
    instances use the Redis clock, so instance clock skew cannot widen a limit.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        redis: str | aioredis.Redis | RespClient,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.client = _redis_client(redis, config.redis_timeout)
        # A client handed in is shared (the gateway's one pipelined connection): not ours to close.
        self._owns_client = not isinstance(redis, RespClient)
        prefix = config.key_prefix
        self._plans = {
            name: _Plan(name, policy, prefix, key_name=name, count_always=False)
            for name, policy in config.policies.items()
        }
        self._tiers = {
            name: _Plan(name, policy, prefix, key_name=_TIER_KEY, count_always=True)
            for name, policy in config.tiers.items()
        }
        # RateLimitConfig merges its defaults under YAML entries, so these two always exist.
        self._anonymous = self._plans["anonymous"]
        self._user = self._plans["user"]
        self._default_tier = self._tiers[config.default_tier]
        self._local = LocalLimiter(config.local_max_keys)
        self._compiled: dict[tuple[str | None, ...], _Compiled] = {}
        self._unknown_warned: set[str] = set()
        # Backend health: while degraded, one request at a time probes Redis, with backoff.
        self.mode = "redis"
        self._probing = False
        self._backoff = config.probe_initial
        self._next_probe = 0.0
        self._set_mode_gauge("redis")

    # -- public API -----------------------------------------------------------------------

    @property
    def folds_revocation(self) -> bool:
        """Whether `evaluate(revocation=...)` is likely to judge a token in the same call (it is
        talking to Redis); when it cannot, it raises RevocationUnchecked instead."""
        return self.mode == "redis"

    async def evaluate(
        self, *, route_policy: str | None, client_ip: str, principal: Principal | None,
        revocation: RevocationKeys | None = None,
    ) -> RateDecision | None:  # fmt: skip
        """Consume one request from every applicable limit, or raise RateLimited/QuotaExceeded.
        With `revocation`, the token is judged first in the same script call: TokenRevoked
        (nothing charged), or RevocationUnchecked when Redis is not there to judge it."""
        started = time.perf_counter()
        timed = True
        try:
            compiled = self._compile(route_policy, client_ip, principal)
            reply = await self._run(compiled, consume=True, revocation=revocation)
            if reply is None:  # fail open
                compiled.plans[0][0].metrics["bypassed"].inc()
                return None
            return self._decide(compiled, reply)
        except RevocationUnchecked:
            timed = False  # no decision: the caller asks again, and that call is the one timed
            raise
        finally:
            if timed:
                _DECISION_TALLY.observe((), time.perf_counter() - started)

    async def usage(self, *, principal: Principal | None, client_ip: str) -> dict[str, Any]:
        """The caller's tier, rate state and today's quota, without consuming anything."""
        compiled = self._compile(None, client_ip, principal)
        limits = compiled.limits
        reply = await self._run(compiled, consume=False)
        plan = compiled.plans[0][0]
        if principal is None:
            tier = "anonymous"
        elif principal.kind == "api_key":
            tier = plan.name
        else:
            tier = principal.tier or plan.name
        rate: dict[str, Any] = {"limit": plan.policy.burst, "remaining": None, "reset": None}
        quota: dict[str, Any] = {"limit": plan.policy.daily_quota, "used": None, "resets_at": None}
        if reply is not None:
            now_ms = reply[1]
            midnight = (now_ms * 1000 // DAY_US + 1) * DAY_US // 1_000_000
            quota["resets_at"] = datetime.fromtimestamp(midnight, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            for index, limit in enumerate(limits):
                _ok, remaining, reset_ms, _retry, used = reply[2 + 5 * index : 7 + 5 * index]
                if limit.is_quota:
                    quota["used"] = used
                else:
                    rate["remaining"] = remaining
                    rate["reset"] = math.ceil(reset_ms / 1000)
        return {"tier": tier, "rate": rate, "quota": quota}

    def invalidate_tier(self, key_id: str) -> None:
        """No-op: the stage keeps no tier cache; the tier comes with each request's principal."""

    async def aclose(self) -> None:
        if self._owns_client:
            self.client.close()

    # -- which limits apply ---------------------------------------------------------------

    def _compile(
        self, route_policy: str | None, client_ip: str, principal: Principal | None
    ) -> _Compiled:
        if principal is None:
            key: tuple[str | None, ...] = (route_policy, client_ip)
        else:  # the tier is part of the key: a changed tier applies to the next request
            key = (route_policy, client_ip, principal.kind, principal.id, principal.key_id,
                   principal.tier)  # fmt: skip
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = _Compiled(self._applicable(route_policy, client_ip, principal))
            if len(self._compiled) >= _MAX_COMPILED:
                del self._compiled[next(iter(self._compiled))]  # the oldest goes first
            self._compiled[key] = compiled
        return compiled

    def _applicable(
        self, route_policy: str | None, client_ip: str, principal: Principal | None
    ) -> list[tuple[_Plan, str]]:
        if principal is None:
            plans = [(self._anonymous, client_ip)]
        elif principal.kind == "api_key":
            tier = self._tiers.get(principal.tier or "") or self._default_tier
            plans = [(tier, principal.key_id or principal.id)]
        else:
            plans = [(self._user, principal.id)]
        if route_policy is not None:
            override = self._plans.get(route_policy)
            if override is None:
                if route_policy not in self._unknown_warned:
                    self._unknown_warned.add(route_policy)
                    _log.warning("unknown rate-limit policy on a route", policy=route_policy)
            else:
                ident = client_ip if override.by_ip or principal is None else plans[0][1]
                plans.append((override, ident))
        return plans

    # -- backends ---------------------------------------------------------------------------

    def _now_us(self) -> int:
        return int((self.clock or time.time)() * 1_000_000)

    async def _run(
        self, compiled: _Compiled, *, consume: bool, revocation: RevocationKeys | None = None
    ) -> list[int] | None:
        """The script's reply from Redis, or from the failure mode; None means fail open."""
        probe = self.mode != "redis"
        if probe and revocation is not None:
            raise RevocationUnchecked()
        if not probe or self._probe_due():
            try:
                reply = await self._remote(compiled, consume, revocation)
            except (OSError, ReplyError) as exc:
                self._degrade(exc, probe=probe)
                if revocation is not None:
                    raise RevocationUnchecked() from None
            else:
                if self.mode != "redis":
                    self._recover()
                return _admitted(reply)
            finally:
                if probe:
                    self._probing = False
        return self._fallback(compiled, consume=consume)

    def _fallback(self, compiled: _Compiled, *, consume: bool) -> list[int] | None:
        """The decision without Redis, by the configured failure mode; None means fail open."""
        mode = self.config.failure_mode
        if mode == "local":
            return self._local.run(compiled.specs, list(compiled.keys), self._now_us(), consume)
        if mode == "open":
            return None
        DECISIONS.labels(policy="*", result="unavailable").inc()
        raise UpstreamUnavailable("rate limiting is unavailable")

    def _payload(
        self, compiled: _Compiled, consume: bool, revocation: RevocationKeys | None
    ) -> bytes:
        """The script call: serialised once when it takes Redis's clock, else with this one's."""
        if self.clock is None and consume:
            return compiled.consume if revocation is None else compiled.consume_with(revocation)
        now = _SERVER_TIME if self.clock is None else bulk(b"%d" % self._now_us())
        return compiled.payload(now, consume=consume, revocation=revocation)

    async def _remote(
        self, compiled: _Compiled, consume: bool, revocation: RevocationKeys | None = None
    ) -> list[int]:
        payload = self._payload(compiled, consume, revocation)
        timeout = self.config.redis_timeout
        try:
            reply: list[int] = await self.client.execute(payload, timeout=timeout)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # Redis restarted or its scripts were flushed: load it again, then retry once.
            await self.client.execute(command(b"SCRIPT", b"LOAD", SCRIPT), timeout=timeout)
            reply = await self.client.execute(payload, timeout=timeout)
        return reply

    def _probe_due(self) -> bool:
        if self._probing or time.monotonic() < self._next_probe:
            return False
        self._probing = True
        return True

    def _degrade(self, exc: BaseException, *, probe: bool) -> None:
        BACKEND_ERRORS.inc()
        if self.mode == "redis":
            self.mode = self.config.failure_mode
            self._backoff = self.config.probe_initial
            self._local.clear()
            self._set_mode_gauge(self.mode)
            _log.warning("rate limiter lost redis, switching mode", mode=self.mode,
                         error=type(exc).__name__)  # fmt: skip
        elif probe:
            self._backoff = min(self._backoff * 2, self.config.probe_max)
        else:
            return  # a request already in flight when Redis went away: the switch is done
        self._next_probe = time.monotonic() + self._backoff

    def _recover(self) -> None:
        _log.warning("rate limiter reached redis again, shared limiting restored",
                     previous=self.mode)  # fmt: skip
        self.mode = "redis"
        self._set_mode_gauge("redis")

    @staticmethod
    def _set_mode_gauge(mode: str) -> None:
        for name in MODES:
            MODE.labels(mode=name).set(1 if name == mode else 0)

    # -- the decision ------------------------------------------------------------------------

    @staticmethod
    def _decide(compiled: _Compiled, reply: list[int]) -> RateDecision:
        limits, owners = compiled.limits, compiled.owners
        if reply[0] == 1:
            best = -1
            best_remaining = best_reset = 0
            for index in range(len(limits)):
                remaining, reset_ms = reply[3 + 5 * index], reply[4 + 5 * index]
                if remaining < 0:  # uncapped counter
                    continue
                if (
                    best < 0
                    or remaining < best_remaining
                    or (remaining == best_remaining and reset_ms > best_reset)
                ):
                    best, best_remaining, best_reset = index, remaining, reset_ms
            _ALLOWED_TALLY.inc(owners[best].allowed_key)
            return RateDecision(
                policy=owners[best].name,
                limit=limits[best].limit,
                remaining=best_remaining,
                reset=math.ceil(best_reset / 1000),
            )
        # Denied: a spent daily quota outranks a rate limit (its wait is the longer one).
        worst = -1
        for index, limit in enumerate(limits):
            if reply[2 + 5 * index] != 0:
                continue
            if worst < 0 or (limit.is_quota, reply[5 + 5 * index]) > (
                limits[worst].is_quota,
                reply[5 + 5 * worst],
            ):
                worst = index
        limit, owner = limits[worst], owners[worst]
        retry = max(1, math.ceil(reply[5 + 5 * worst] / 1000))
        headers = {
            "Retry-After": str(retry),
            "RateLimit-Limit": str(limit.limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(max(retry, math.ceil(reply[4 + 5 * worst] / 1000))),
        }
        if limit.is_quota:
            owner.metrics["quota_exceeded"].inc()
            raise QuotaExceeded("the daily request quota is used up", headers=headers)
        owner.metrics["rate_limited"].inc()
        raise RateLimited("too many requests, slow down", headers=headers)
