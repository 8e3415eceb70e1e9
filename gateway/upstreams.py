"""Upstream pools: instances, load balancing, passive + active health, circuit breaker, retries.

One keep-alive `ClientSession` per upstream service (all its instances share the connector).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from enum import IntEnum

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import Gauge, Histogram
from yarl import URL

from gateway.h1client import H1Pool
from libs.common.metrics import LATENCY_BUCKETS

__all__ = [
    "CIRCUIT_STATE",
    "UPSTREAM_DURATION",
    "CircuitBreaker",
    "CircuitState",
    "Instance",
    "RetryBudget",
    "Upstream",
    "UpstreamPools",
    "backoff_delay",
]

_log = structlog.get_logger("portico.gateway.upstreams")

UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time from sending a request upstream to receiving its response headers",
    ["upstream", "route"],
    buckets=LATENCY_BUCKETS,
)
CIRCUIT_STATE = Gauge(
    "gateway_circuit_state",
    "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
    ["upstream"],
)


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `open_seconds` lets one probe through."""

    def __init__(self, name: str, *, threshold: int, open_seconds: float) -> None:
        self.name = name
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.probe_started = 0.0
        self._gauge = CIRCUIT_STATE.labels(name)
        self._gauge.set(0)

    def _set(self, state: CircuitState) -> None:
        if state is not self.state:
            _log.warning("circuit", upstream=self.name, state=state.name.lower())
        self.state = state
        self._gauge.set(int(state))

    def allow(self) -> bool:
        """May a request go upstream now? (A half-open circuit admits one probe at a time.)"""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if time.monotonic() - self.opened_at < self.open_seconds:
                return False
            self._set(CircuitState.HALF_OPEN)
        now = time.monotonic()
        # A probe whose request vanished (client gone, cancelled) must not wedge the circuit.
        if self.probing and now - self.probe_started < self.open_seconds:
            return False
        self.probing = True
        self.probe_started = now
        return True

    def success(self) -> None:
        self.failures = 0
        if self.state is not CircuitState.CLOSED:
            self.probing = False
            self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self.failures >= self.threshold
        ):
            self.probing = False
            self.opened_at = time.monotonic()
            self._set(CircuitState.OPEN)

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. the client went away)."""
        self.probing = False


class Instance:
    """One address of an upstream, with its passive-health bookkeeping."""

    __slots__ = (
        "base",
        "ejected_until",
        "ejections",
        "failed_checks",
        "failures",
        "h1",
        "outstanding",
    )  # fmt: skip

    def __init__(self, base: str, *, connect_timeout: float = 2.0, fast: bool = True) -> None:
        self.base = base.rstrip("/")
        self.failed_checks = 0  # consecutive failed active health checks
        url = URL(self.base)
        # The lean client speaks plain HTTP/1.1 only; https upstreams go through aiohttp.
        self.h1 = (
            H1Pool(url.host or "127.0.0.1", url.port or 80, connect_timeout=connect_timeout)
            if fast and url.scheme == "http" and url.path in ("", "/")
            else None
        )
        self.outstanding = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now


class RetryBudget:
    """Retries may add at most `ratio` of the request volume (token bucket, capped)."""

    def __init__(self, *, ratio: float, cap: float) -> None:
        self.ratio = ratio
        self.cap = cap
        self.tokens = cap

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def backoff_delay(attempt: int, base: float) -> float:
    """Full-jitter exponential backoff (AWS architecture blog)."""
    return random.uniform(0, base * (2**attempt))  # noqa: S311 - jitter, not crypto


class Upstream:
    """A service's instances behind one keep-alive session."""

    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        strategy: str,
        eject_after: int,
        eject_base: float,
        eject_max: float,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        connect_timeout: float = 2.0,
        fast_client: bool = True,
    ) -> None:
        if not urls:
            raise ValueError(f"upstream {name} has no instances")
        self.name = name
        self.instances = [
            Instance(url, connect_timeout=connect_timeout, fast=fast_client) for url in urls
        ]
        self.strategy = strategy
        self.eject_after = eject_after
        self.eject_base = eject_base
        self.eject_max = eject_max
        self.breaker = breaker
        self.budget = budget
        self._rr = itertools.cycle(range(len(self.instances)))
        self.session: aiohttp.ClientSession | None = None

    def pick(self, exclude: Instance | None = None) -> Instance | None:
        """An available instance (not `exclude` when there is another)."""
        if len(self.instances) == 1:
            return self.instances[0]  # the only one, ejected or not (panic mode)
        now = time.monotonic()
        candidates = [i for i in self.instances if i.ejected_until <= now]
        if not candidates:
            # Panic mode (as Envoy's panic threshold): with every instance ejected, try them all
            # rather than refuse everything; the circuit breaker is what fails fast.
            candidates = list(self.instances)
        if exclude is not None and len(candidates) > 1:
            candidates = [i for i in candidates if i is not exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.strategy == "least_outstanding":
            # Power of two choices keeps the pick O(1) and avoids herding on one instance.
            a, b = random.sample(candidates, 2)
            return a if a.outstanding <= b.outstanding else b
        for _ in range(len(self.instances)):
            instance = self.instances[next(self._rr)]
            if instance in candidates:
                return instance
        return candidates[0]

    def succeeded(self, instance: Instance) -> None:
        instance.failures = 0
        instance.ejections = 0
        self.breaker.success()

    def failed(self, instance: Instance) -> None:
        instance.failures += 1
        if instance.failures >= self.eject_after:
            self.eject(instance)
        # One bad instance among healthy ones is ejection's business (outlier detection); the
        # breaker is for the service failing as a whole. Counting every failure would let one
        # SIGKILLed replica's in-flight requests open the circuit for the healthy ones too.
        now = time.monotonic()
        if not any(i is not instance and i.ejected_until <= now for i in self.instances):
            self.breaker.failure()

    def eject(self, instance: Instance) -> None:
        delay = min(self.eject_max, self.eject_base * (2**instance.ejections))
        instance.ejections += 1
        instance.failures = 0
        instance.ejected_until = time.monotonic() + delay
        _log.warning("instance ejected", upstream=self.name, instance=instance.base, seconds=delay)

    def readmit(self, instance: Instance) -> None:
        if instance.ejected_until > time.monotonic():
            _log.info("instance re-admitted", upstream=self.name, instance=instance.base)
        instance.ejected_until = 0.0
        instance.failures = 0


class UpstreamPools:
    """Every upstream of the gateway, their sessions and the active health checker."""

    def __init__(self, upstreams: dict[str, Upstream], *, health_interval: float,
                 health_timeout: float, connect_timeout: float,
                 unhealthy_threshold: int = 2) -> None:  # fmt: skip
        self.upstreams = upstreams
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.unhealthy_threshold = unhealthy_threshold
        self.connect_timeout = connect_timeout

    def __getitem__(self, name: str) -> Upstream:
        return self.upstreams[name]

    def session(self, name: str) -> aiohttp.ClientSession:
        session = self.upstreams[name].session
        assert session is not None, "upstream sessions are created by UpstreamPools.ctx"
        return session

    async def check(self, upstream: Upstream, instance: Instance) -> bool:
        """Active health check: the instance's `/readyz` answers 200."""
        try:
            async with self.session(upstream.name).get(
                f"{instance.base}/readyz",
                timeout=aiohttp.ClientTimeout(total=self.health_timeout),
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _health_loop(self) -> None:
        while True:
            for upstream in self.upstreams.values():
                results = await asyncio.gather(
                    *(self.check(upstream, instance) for instance in upstream.instances)
                )
                for instance, ok in zip(upstream.instances, results, strict=True):
                    if ok:
                        instance.failed_checks = 0
                        if instance.ejected_until > time.monotonic():
                            upstream.readmit(instance)
                        continue
                    instance.failed_checks += 1
                    # One slow /readyz on a loaded box is not a dead instance (Envoy's
                    # unhealthy_threshold): eject after consecutive failed checks only.
                    if (
                        instance.failed_checks >= self.unhealthy_threshold
                        and instance.ejected_until <= time.monotonic()
                    ):
                        upstream.eject(instance)
            await asyncio.sleep(self.health_interval * random.uniform(0.8, 1.2))  # noqa: S311

    def ctx(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """cleanup_ctx: one keep-alive session per upstream and the health-check task."""

        async def ctx(_: web.Application) -> AsyncIterator[None]:
            for upstream in self.upstreams.values():
                upstream.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=60),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    read_bufsize=256 * 1024,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                )
            task = asyncio.create_task(self._health_loop(), name="gateway-health-checks")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                for upstream in self.upstreams.values():
                    for instance in upstream.instances:
                        if instance.h1 is not None:
                            instance.h1.close()
                    if upstream.session is not None:
                        await upstream.session.close()

        return ctx
