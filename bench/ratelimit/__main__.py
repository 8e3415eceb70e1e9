"""Rate-limiter benchmark: decisions/s of the Lua script, and client CPU per decision.

    .venv/bin/python -m bench.ratelimit [--redis redis://127.0.0.1:6379/0] [--seconds 3]

Client CPU is `time.process_time()` per decision in this process (what a gateway worker pays);
server cost is Redis's own `INFO commandstats` usec_per_call for EVALSHA. Writes
bench/ratelimit/results.md. Keys use a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from gateway.ratelimit import Policy, RateLimitConfig, RateLimitStage
from gateway.ratelimit.script import SCRIPT
from libs.common.identity import Principal

RESULTS = Path(__file__).with_name("results.md")
# Generous policies: the benchmark measures the decision, not how often it says no.
POLICIES = {"anonymous": Policy(rate=1e6, burst=1_000_000), "login": Policy(rate=1e6, burst=10**6)}
TIERS = {"pro": Policy(rate=1e6, burst=10**6, daily_quota=10**9, key="principal")}


async def client_cpu(
    label: str, call: Callable[[int], Awaitable[object]], n: int
) -> tuple[str, float, float]:
    """Client CPU microseconds per sequential call."""
    for i in range(200):  # warm up (connect, load the script)
        await call(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        await call(i)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return label, cpu / n * 1e6, wall / n * 1e6


async def throughput(
    stage: RateLimitStage, seconds: float, concurrency: int
) -> tuple[float, float]:
    """Decisions/s and client CPU µs/decision with `concurrency` requests in flight on the
    stage's one pipelined connection."""
    stop = time.perf_counter() + seconds
    count = 0

    async def worker(w: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            await stage.evaluate(route_policy=None, client_ip=f"10.{w}.{i % 250}.1", principal=None)
            i += 1
            count += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu = time.process_time() - cpu
    return count / (time.perf_counter() - started), cpu / count * 1e6


async def main(url: str, seconds: float, n: int) -> None:
    prefix = f"bench:rl:{uuid.uuid4().hex[:8]}:"
    config = RateLimitConfig(policies=POLICIES, tiers=TIERS, key_prefix=prefix, redis_timeout=1.0)
    stage = RateLimitStage(config, url)
    local = RateLimitStage(
        config.model_copy(update={"failure_mode": "local"}), "redis://127.0.0.1:1/0"
    )
    admin = aioredis.from_url(url)
    key = Principal(id="u1", kind="api_key", tier="pro", key_id="k1")
    rows: list[tuple[str, float, float]] = []
    try:
        # Deltas, not CONFIG RESETSTAT: the Redis is shared with other people's work.
        before = (await admin.info("commandstats")).get("cmdstat_evalsha", {})
        rows.append(
            await client_cpu(
                "stage.evaluate, anonymous (1 key)",
                lambda i: stage.evaluate(
                    route_policy=None, client_ip=f"10.0.{i % 250}.1", principal=None
                ),
                n,
            )
        )
        rows.append(
            await client_cpu(
                "stage.evaluate, API key + login override (3 keys: rate, quota, route)",
                lambda i: stage.evaluate(route_policy="login", client_ip="10.1.1.1", principal=key),
                n,
            )
        )
        sha = await admin.script_load(SCRIPT)
        rows.append(
            await client_cpu(
                "baseline: redis.asyncio EVALSHA of the same script (1 key)",
                lambda i: admin.evalsha(
                    sha, 1, f"{prefix}r:x:{i % 250}", "", "1", "0", "0", "r", "1", "1000000"
                ),
                n,
            )
        )
        await local.evaluate(route_policy=None, client_ip="x", principal=None)  # -> local mode
        rows.append(
            await client_cpu(
                "local fallback (in-process GCRA), anonymous",
                lambda i: local.evaluate(
                    route_policy=None, client_ip=f"10.0.{i % 250}.1", principal=None
                ),
                n,
            )
        )
        rates = {c: await throughput(stage, seconds, c) for c in (1, 16, 64)}
        stats = await admin.info("commandstats")
        after = stats.get("cmdstat_evalsha", {})
        calls = after.get("calls", 0) - before.get("calls", 0)
        usec = (after.get("usec", 0) - before.get("usec", 0)) / max(calls, 1)
    finally:
        keys = [k async for k in admin.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await admin.delete(*keys[i : i + 500])
        await admin.aclose()
        await stage.aclose()
        await local.aclose()

    lines = [
        "# Rate-limiter benchmark",
        "",
        f"`{datetime.now(UTC):%Y-%m-%d %H:%M}` UTC · {n} sequential calls per row, uvloop, "
        "shared Redis 7.0 on 127.0.0.1, 2 cores shared with other work (numbers are noisy).",
        "",
        "## Client cost per decision (one process)",
        "",
        "| path | client CPU µs/decision | wall µs/decision |",
        "|---|---|---|",
        *(f"| {label} | {cpu:.1f} | {wall:.1f} |" for label, cpu, wall in rows),
        "",
        "## Decisions/s of one gateway process (one pipelined connection)",
        "",
        "| in flight | decisions/s | client CPU µs/decision |",
        "|---|---|---|",
        *(f"| {c} | {rate:,.0f} | {cpu:.1f} |" for c, (rate, cpu) in rates.items()),
        "",
        f"Redis server time per EVALSHA (INFO commandstats): "
        f"**{usec:.2f} µs** over {calls:,} calls (⇒ one Redis core sustains "
        f"~{1e6 / max(usec, 0.01):,.0f} decisions/s of script time).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.run(main(args.redis, args.seconds, args.n))
