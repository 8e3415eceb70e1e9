"""The shared backend: exact across processes, and what happens when Redis goes away, comes back,
is slow, or forgets the script."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gateway.ratelimit import RateLimitConfig, RateLimitStage
from libs.common.embedded import free_port
from libs.common.errors import RateLimited, UpstreamUnavailable
from tests.gateway.ratelimit.conftest import OwnRedis, StageFactory

IP = "203.0.113.7"
ROOT = Path(__file__).resolve().parents[3]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def burst(stage: RateLimitStage, count: int, ip: str = IP) -> int:
    """How many of `count` back-to-back requests are admitted."""
    passed = 0
    for _ in range(count):
        try:
            await stage.evaluate(route_policy=None, client_ip=ip, principal=None)
        except RateLimited:
            continue
        passed += 1
    return passed


async def until_mode(stage: RateLimitStage, mode: str, *, ip: str = "198.51.100.99") -> None:
    """Send requests (for another client) until the stage has switched to `mode`."""
    deadline = time.monotonic() + 20
    while stage.mode != mode:
        assert time.monotonic() < deadline, f"stage stayed in {stage.mode!r}"
        with contextlib.suppress(RateLimited):
            await stage.evaluate(route_policy=None, client_ip=ip, principal=None)
        await asyncio.sleep(0.02)


def test_four_worker_processes_together_admit_exactly_the_burst(
    redis_url: str, redis_prefix: str
) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.ratelimit.hammer", redis_url, redis_prefix, "60"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:  # all start together: 240 requests race for a burst of 50
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        counts = [int(worker.communicate(timeout=60)[0].strip()) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert sum(counts) == 50
    assert all(worker.returncode == 0 for worker in workers)


async def test_two_instances_share_one_budget(make_stage: StageFactory) -> None:
    first, second = await make_stage(), await make_stage()
    assert await burst(first, 12) == 12
    assert await burst(second, 12) == 8  # not 12: the burst of 20 is shared, not per instance


# use_clock=False: the production path (Redis's own clock), which calls Redis inline.
@pytest.mark.parametrize("use_clock", [True, False], ids=["test-clock", "redis-clock"])
async def test_redis_stopped_local_mode_keeps_limiting_and_shared_limiting_returns(
    make_stage: StageFactory, own_redis: OwnRedis, use_clock: bool
) -> None:
    stage = await make_stage(
        url=own_redis.url, probe_initial=0.05, probe_max=0.2, use_clock=use_clock
    )
    assert await burst(stage, 25) == 20  # shared state in Redis: IP is out of budget
    errors = metric("gateway_ratelimit_backend_errors_total")
    own_redis.stop()

    assert await burst(stage, 25, ip="198.51.100.5") == 20  # local mode still limits
    assert stage.mode == "local"
    assert metric("gateway_ratelimit_backend_errors_total") > errors
    assert metric("gateway_ratelimit_mode", mode="local") == 1

    own_redis.start()  # same port, empty Redis
    await until_mode(stage, "redis")
    assert metric("gateway_ratelimit_mode", mode="redis") == 1
    # Shared again: a second instance sees what the first one spends.
    other = await make_stage(url=own_redis.url, use_clock=use_clock)
    assert await burst(stage, 15, ip="198.51.100.6") == 15
    assert await burst(other, 15, ip="198.51.100.6") == 5


async def test_slow_redis_does_not_stall_decisions(
    make_stage: StageFactory, own_redis: OwnRedis
) -> None:
    # No probe during the burst below (it could land before or after the sleep).
    stage = await make_stage(url=own_redis.url, redis_timeout=0.05, probe_initial=2, probe_max=2)
    assert await burst(stage, 1) == 1
    sleeper = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", str(own_redis.port), "DEBUG", "SLEEP", "2",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until_mode(stage, "local")
        # Decided locally while Redis sleeps: the client is limited, not left waiting.
        assert await burst(stage, 25) == 20
    finally:
        await sleeper.wait()
    await until_mode(stage, "redis")


async def test_open_mode_admits_everything_while_redis_is_unreachable(
    make_stage: StageFactory,
) -> None:
    stage = await make_stage(url=f"redis://127.0.0.1:{free_port()}/0", failure_mode="open")
    before = metric("gateway_ratelimit_decisions_total", policy="anonymous", result="bypassed")
    decisions = [
        await stage.evaluate(route_policy=None, client_ip=IP, principal=None) for _ in range(30)
    ]
    assert decisions == [None] * 30
    assert stage.mode == "open"
    after = metric("gateway_ratelimit_decisions_total", policy="anonymous", result="bypassed")
    assert after == before + 30


async def test_closed_mode_refuses_with_503_while_redis_is_unreachable(
    make_stage: StageFactory,
) -> None:
    stage = await make_stage(url=f"redis://127.0.0.1:{free_port()}/0", failure_mode="closed")
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable) as refused:
            await stage.evaluate(route_policy=None, client_ip=IP, principal=None)
        assert refused.value.status == 503
        assert refused.value.code == "UPSTREAM_UNAVAILABLE"
    assert stage.mode == "closed"


@pytest.mark.parametrize("use_clock", [True, False], ids=["test-clock", "redis-clock"])
async def test_script_reloaded_after_script_flush(
    make_stage: StageFactory, own_redis: OwnRedis, use_clock: bool
) -> None:
    stage = await make_stage(url=own_redis.url, use_clock=use_clock)
    assert await burst(stage, 5) == 5
    admin = aioredis.from_url(own_redis.url)
    try:
        await admin.script_flush()
        assert await admin.script_exists(stage_sha()) == [False]
        assert await burst(stage, 20) == 15  # same budget, continued: state kept, script reloaded
        assert await admin.script_exists(stage_sha()) == [True]
    finally:
        await admin.aclose()
    assert stage.mode == "redis"


def stage_sha() -> str:
    from gateway.ratelimit.script import SCRIPT_SHA

    return SCRIPT_SHA.decode()


async def test_keys_expire_on_their_own(make_stage: StageFactory, redis_url: str,
                                        redis_prefix: str) -> None:  # fmt: skip
    stage = await make_stage(use_clock=False)
    await stage.evaluate(route_policy=None, client_ip=IP, principal=None)
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
        assert keys == [f"{redis_prefix}r:anonymous:{IP}".encode()]
        assert 0 < await client.pttl(keys[0]) <= 1200  # one interval + 1 s of slack
    finally:
        await client.aclose()


async def test_a_redis_asyncio_client_is_accepted_for_its_address(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    client = aioredis.from_url(own_redis.url)
    stage = RateLimitStage(RateLimitConfig(key_prefix=redis_prefix, redis_timeout=1.0), client)
    try:
        assert await burst(stage, 25) == 20
        assert await client.exists(f"{redis_prefix}r:anonymous:{IP}") == 1
    finally:
        await stage.aclose()
        await client.aclose()
