"""Fixtures for the rate limiter: an injectable clock, a stage factory on the shared Redis (with
this test's key prefix), and a private redis-server that tests may stop, restart and flush."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.ratelimit import RateLimitConfig, RateLimitStage
from libs.common.embedded import free_port, wait_for_port

# 2027-01-15 12:00:00 UTC: far from midnight unless a test moves it there.
NOON = 1_800_000_000.0 - (1_800_000_000 % 86_400) + 12 * 3600


@dataclass
class FakeClock:
    now: float = NOON

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StageFactory = Callable[..., Awaitable[RateLimitStage]]


@pytest.fixture
async def make_stage(
    redis_url: str, redis_prefix: str, clock: FakeClock
) -> AsyncIterator[StageFactory]:
    """`await make_stage(url=..., use_clock=True, **config)` -> a stage; closed afterwards."""
    stages: list[RateLimitStage] = []

    async def make(
        *, url: str | None = None, use_clock: bool = True, **config: Any
    ) -> RateLimitStage:
        config.setdefault("key_prefix", redis_prefix)
        # The shared Redis answers slowly when the 2 cores are busy; a 75 ms timeout would make
        # tests flip to local mode. Tests of timeouts set their own.
        config.setdefault("redis_timeout", 1.0)
        stage = RateLimitStage(
            RateLimitConfig.model_validate(config), url or redis_url,
            clock=clock if use_clock else None,
        )  # fmt: skip
        stages.append(stage)
        return stage

    yield make
    for stage in stages:
        await stage.aclose()


@dataclass
class OwnRedis:
    """A redis-server of this test's own on a free port: safe to stop, restart and flush."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rl-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert wait_for_port("127.0.0.1", self.port, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)
