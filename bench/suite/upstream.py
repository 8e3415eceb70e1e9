"""The suite's upstream: bench/gateway's small aiohttp app (same JSON body, JWKS, /readyz) on every
`/api/v1/*` path, plus the users service's API-key resolve endpoint for one known key, so nginx
and the gateway proxy to exactly the same process.

    python -m bench.suite.upstream PORT JWKS_FILE API_KEY
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

from bench.gateway.upstream import item, jwks, readyz

API_KEY = web.AppKey("api_key", str)
RESOLVED = orjson.dumps(
    {
        "key_id": "k_bench",
        "user_id": "user-apikey",
        "scopes": [],
        "tier": "enterprise",
        "roles": ["user"],
    }
)


async def resolve(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    if body.get("key") != request.app[API_KEY]:
        return web.Response(status=404)
    return web.Response(body=RESOLVED, content_type="application/json")


def main() -> None:
    port, jwks_file, api_key = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    app = web.Application()
    app["jwks"] = jwks_file.read_bytes()
    app[API_KEY] = api_key
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/internal/v1/api-keys/resolve", resolve)
    app.router.add_get("/api/v1/{tail:.*}", item)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
