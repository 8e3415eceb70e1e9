"""The benchmark's upstream: one aiohttp process (uvloop) with a small JSON route, a JWKS and
`/readyz`. `python bench/gateway/upstream.py PORT JWKS_FILE`."""

from __future__ import annotations

import sys
from pathlib import Path

import uvloop
from aiohttp import web

BODY = b'{"id":"user-1","display_name":"Bench User","created_at":"2026-01-01T00:00:00Z"}'


async def item(_: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def jwks(request: web.Request) -> web.Response:
    return web.Response(body=request.app["jwks"], content_type="application/json")


async def readyz(_: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


def main() -> None:
    port, jwks_file = int(sys.argv[1]), Path(sys.argv[2])
    app = web.Application()
    app["jwks"] = jwks_file.read_bytes()
    app.router.add_get("/api/v1/bench", item)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/readyz", readyz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())  # fmt: skip


if __name__ == "__main__":
    main()
