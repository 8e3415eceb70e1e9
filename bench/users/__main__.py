"""Users service benchmarks: JWT sign/verify cost per operation, argon2id cost, login throughput.

    python -m bench.users [--seconds 10] [--concurrency 16]

Login runs the real app in-process (aiohttp test server) against an embedded SecantusDB and the
local Redis, with the production argon2id parameters, so it measures what one instance sustains.
Numbers depend on the machine; the run prints them and the environment they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid
from typing import Any

import aiohttp
import jwt
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.embedded import EmbeddedMongo
from libs.common.logging import configure_logging
from services.users.app import create_app
from services.users.service.passwords import Passwords
from services.users.settings import Settings
from services.users.tokens import issue_access_token, jwk_of, verify_access_token

PASSWORD = "benchmark passphrase 42"  # noqa: S105


def _per_op(func: Any, seconds: float = 1.0) -> tuple[float, int]:
    """Mean microseconds per call of `func`, over about `seconds`."""
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            func()
        n += 100
    return (time.perf_counter() - started) / n * 1e6, n


def bench_tokens() -> dict[str, float]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    jwks = {"keys": [jwk_of("k1", public.public_bytes_raw())]}
    args = {
        "private_key": private,
        "kid": "k1",
        "issuer": "portico",
        "audience": "portico-api",
        "subject": "6b035d794e60b9114c8aa824",
        "session_id": "6b035d794e60b9114c8aa826",
        "roles": ["user"],
        "lifetime": 900,
    }
    token, _ = issue_access_token(**args)
    sign_us, _ = _per_op(lambda: issue_access_token(**args))
    verify_jwks_us, _ = _per_op(
        lambda: verify_access_token(token, jwks, issuer="portico", audience="portico-api")
    )
    # What a gateway pays with the key already parsed (its JWKS cache): one decode + checks.
    verify_key_us, _ = _per_op(
        lambda: jwt.decode(
            token, public, algorithms=["EdDSA"], audience="portico-api", issuer="portico"
        )
    )
    return {
        "sign_us": sign_us,
        "verify_from_jwks_us": verify_jwks_us,
        "verify_cached_key_us": verify_key_us,
    }


async def bench_argon2(settings: Settings) -> dict[str, float]:
    passwords = Passwords(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    hashed = await passwords.hash(PASSWORD)
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        await passwords.verify(hashed, PASSWORD)
        samples.append(time.perf_counter() - started)
    return {"verify_ms_median": statistics.median(samples) * 1000}


async def bench_login(seconds: float, concurrency: int) -> dict[str, float]:
    with EmbeddedMongo() as mongo:
        settings = Settings(
            environment="test",
            mongodb_url=mongo.url,
            mongodb_database="bench_users",
            log_level="WARNING",
            redis_prefix=f"bench:{uuid.uuid4().hex[:8]}:",
            login_ip_max_attempts=10**9,
            lockout_threshold=10**9,
        )
        server = TestServer(create_app(settings))
        await server.start_server()
        try:
            async with aiohttp.ClientSession(str(server.make_url(""))) as http:
                emails = [f"bench{i}@example.com" for i in range(concurrency)]
                for email in emails:
                    async with http.post(
                        "/api/v1/auth/register",
                        json={"email": email, "password": PASSWORD, "display_name": "Bench"},
                    ) as r:
                        assert r.status == 201, await r.text()
                latencies: list[float] = []
                deadline = time.perf_counter() + seconds

                async def worker(email: str) -> None:
                    while time.perf_counter() < deadline:
                        started = time.perf_counter()
                        async with http.post(
                            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
                        ) as r:
                            await r.read()
                            assert r.status == 200, r.status
                        latencies.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.gather(*(worker(e) for e in emails))
                elapsed = time.perf_counter() - started
        finally:
            await server.close()
    latencies.sort()
    return {
        "logins_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "count": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(level="WARNING", json=False, service="bench")
    print(
        f"# users bench: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, argon2id m={settings.argon2_memory_kib} KiB "
        f"t={settings.argon2_time_cost} p={settings.argon2_parallelism}"
    )
    tokens = bench_tokens()
    print(f"jwt sign (EdDSA)                  {tokens['sign_us']:8.1f} us/op")
    print(f"jwt verify (parse JWKS + verify)  {tokens['verify_from_jwks_us']:8.1f} us/op")
    print(f"jwt verify (cached key)           {tokens['verify_cached_key_us']:8.1f} us/op")
    argon = asyncio.run(bench_argon2(settings))
    print(f"argon2id verify                   {argon['verify_ms_median']:8.1f} ms (median)")
    login = asyncio.run(bench_login(args.seconds, args.concurrency))
    print(
        f"login throughput                  {login['logins_per_s']:8.1f} logins/s "
        f"({args.concurrency} concurrent, {int(login['count'])} logins)"
    )
    print(
        f"login latency                     p50 {login['p50_ms']:.1f} ms, "
        f"p99 {login['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
