"""The gateway's own Python work per request, without the kernel or another process in the way.

    .venv/bin/python -m bench.gateway.pipeline [--scenario miss|limits|hit]
                                               [--requests 20000] [--repeat 7] [--profile]

One fast-front connection is fed an authenticated `GET /api/v1/bench` head again and again; the
upstream is a keep-alive connection whose transport answers each request at once (in the next
loop pass), and the revocation `MGET` is answered "nothing revoked" the same way. Everything
else is the production pipeline: routing, token cache, revocation check, forwarded headers,
upstream bookkeeping, response relay, edge headers, metrics (`miss`, the suite's scenario 3).
`limits` adds the rate limiter (a policy that admits everything, its script call answered
"allowed" the same way: the difference between the two figures is the limiter's own work in the
gateway, not Redis's). `hit` is scenario 1: an anonymous GET of a public cached route, its
Redis lookup answered with a stored entry. It reports CPU µs per request
(process time; the fastest of `--repeat` batches, as other work on the box only adds), ~40 µs
on the 2-core box in 2026-12 against ~65-85 µs for the same request through real sockets
(`make bench`, scenario 3): what is left there is the kernel and the event loop. `--profile`
prints cProfile's top functions of one more batch. Starts the JWKS upstream
(`bench.gateway.upstream`) and connects to Redis (REDIS_URL) only for start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"id":"user-1","display_name":"Bench User","created_at":"2026-01-01T00:00:00Z"}'
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nDate: Tue, 01 Dec 2026 15:56:23 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n%s" % (len(BODY), BODY)
)


class _Transport:
    """Enough of an asyncio transport for the front end and the upstream connection."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write
        self.closing = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _token(key: Ed25519PrivateKey) -> str:
    now = int(time.time())
    claims = {
        "iss": "portico", "aud": "portico-api", "sub": "user-0", "iat": now, "nbf": now,
        "exp": now + 7200, "jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex, "roles": ["user"],
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "bench"})


def _redis_reply(payload: bytes, now_ms: int, entry: bytes) -> list[Any]:
    """What Redis answers the hot path: a rate-limit script call admits (one limit, plenty
    left), a cache lookup finds `entry`, a revocation MGET finds nothing."""
    if b"EVALSHA" in payload[:40]:
        return [1, now_ms, 1, 999_999, 1, 0, 0]
    if b"cache:e:" in payload:
        return [entry]
    return [None, None, None]


def _entry() -> bytes:
    from gateway.cache.entry import Entry, encode_entry

    headers = [("Content-Type", "application/json; charset=utf-8"), ("ETag", '"bench"')]
    return encode_entry(Entry(200, headers, BODY, False, '"bench"', time.time(), 3600.0, []))


async def run(requests: int, repeat: int, profile: bool, scenario: str) -> list[float]:
    from gateway.app import GATEWAY, create_app
    from gateway.h1client import _Connection
    from gateway.settings import Settings
    from libs.common.app import freeze_heap
    from libs.common.logging import configure_logging
    from libs.common.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    key = Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (work / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "EdDSA"}]}))
    (work / "routes.yaml").write_text(
        "routes:\n  - {path: /api/v1/bench, methods: [GET], upstream: users, auth: required}\n"
        "  - {path: /api/v1/public, methods: [GET], upstream: users, auth: none,\n"
        "     cache: {ttl: 3600, scope: public}}\n"
        "rate_limits:\n  policies:\n"
        "    user: {rate: 1000000000, burst: 1000000000, key: principal}\n"
    )
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway.upstream", str(port), str(work / "jwks.json")],
        cwd=ROOT,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 20):
            raise SystemExit("the JWKS upstream did not start")
        os.environ.update({
            # Every service at the one upstream: its /readyz keeps the health checks quiet.
            **{f"PORTICO_GATEWAY_{name}_URLS": f"http://127.0.0.1:{port}"
               for name in ("USERS", "ORGS", "FILES")},
            "PORTICO_GATEWAY_ROUTES_FILE": str(work / "routes.yaml"),
            "PORTICO_GATEWAY_REDIS_PREFIX": f"bench:pipeline:{uuid.uuid4().hex[:8]}:",
            "PORTICO_GATEWAY_LOG_LEVEL": "ERROR",
            "PORTICO_GATEWAY_ACCESS_LOG": "false",
            "PORTICO_GATEWAY_EVENTS_ENABLED": "false",
            "PORTICO_GATEWAY_RATELIMIT_ENABLED": "true" if scenario == "limits" else "false",
        })  # fmt: skip
        settings = load_settings(Settings)
        configure_logging(level=settings.log_level, json=False, service="gateway")
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            freeze_heap()  # as run_app does once started
            loop = asyncio.get_running_loop()
            gateway = app[GATEWAY]
            entry = _entry()

            def execute(payload: bytes, *, timeout: float | None = None) -> asyncio.Future[Any]:
                reply = loop.create_future()
                answer = _redis_reply(payload, int(time.time() * 1000), entry)
                loop.call_soon(reply.set_result, answer)
                return reply

            gateway.revocations.client.execute = execute  # type: ignore[method-assign]
            pool = gateway.pools["users"].instances[0].h1
            assert pool is not None
            conn = _Connection(pool)
            conn.connection_made(
                _Transport(lambda _: loop.call_soon(conn.data_received, UPSTREAM_RESPONSE))
            )
            pool._idle.append(conn)
            answered: list[asyncio.Future[bytes]] = []

            def client_write(data: bytes) -> None:
                if answered and not answered[-1].done():
                    answered[-1].set_result(bytes(data))

            server = runner.server
            assert server is not None
            front = server()
            front.connection_made(_Transport(client_write))  # type: ignore[arg-type]
            head = (
                b"GET /api/v1/public HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
                if scenario == "hit"
                else f"GET /api/v1/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                f"Authorization: Bearer {_token(key)}\r\n\r\n".encode()
            )

            async def one() -> bytes:
                answered[:] = [loop.create_future()]
                front.data_received(head)
                return await answered[0]

            for _ in range(200):  # JWKS, token cache, first connection
                out = await one()
            expected = {"hit": b"X-Cache-Status: HIT", "limits": b"RateLimit-Limit"}
            if not out.startswith(b"HTTP/1.1 200") or (
                scenario in expected and expected[scenario] not in out
            ):
                raise SystemExit(f"unexpected answer: {out[:400]!r}")
            if pool._idle != [conn]:
                raise SystemExit("the gateway did not keep the in-process upstream connection")
            results = []
            for _ in range(repeat):
                started = time.process_time()
                for _ in range(requests):
                    await one()
                results.append((time.process_time() - started) / requests * 1e6)
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(requests):
                    await one()
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return results
        finally:
            await runner.cleanup()
    finally:
        upstream.terminate()
        upstream.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--scenario", choices=["miss", "limits", "hit"], default="miss")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    results = uvloop.run(run(args.requests, args.repeat, args.profile, args.scenario))
    print(
        f"gateway pipeline ({args.scenario}), in process: "
        f"{min(results):.1f} µs CPU per request "
        f"(fastest of {args.repeat} batches of {args.requests}; all: "
        f"{', '.join(f'{r:.1f}' for r in sorted(results))})"
    )


if __name__ == "__main__":
    main()
