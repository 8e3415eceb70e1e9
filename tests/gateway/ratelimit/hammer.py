"""One "gateway worker" for the multi-process test: waits for `go` on stdin, then sends `n`
concurrent decisions for one client IP and prints how many were admitted.

    python -m tests.gateway.ratelimit.hammer <redis_url> <key_prefix> <n>
"""

from __future__ import annotations

import asyncio
import sys

from gateway.ratelimit import Policy, RateLimitConfig, RateLimitStage
from libs.common.errors import RateLimited

# 1 request per hour, burst 50: nothing refills while the test runs, so exactly 50 may pass.
POLICY = {"anonymous": Policy(rate=1, per=3600, burst=50)}


async def main(url: str, prefix: str, n: int) -> int:
    config = RateLimitConfig(policies=POLICY, key_prefix=prefix, redis_timeout=2.0)
    stage = RateLimitStage(config, url)  # the Redis server's clock, as in production

    async def one() -> int:
        try:
            await stage.evaluate(route_policy=None, client_ip="203.0.113.9", principal=None)
        except RateLimited:
            return 0
        return 1

    # Connect (and load the script) before the start signal, so the race is on decisions only.
    await stage.usage(principal=None, client_ip="198.51.100.1")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    admitted = sum(await asyncio.gather(*(one() for _ in range(n))))
    await stage.aclose()
    return admitted


if __name__ == "__main__":
    sys.stdout.write(f"{asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))}\n")
