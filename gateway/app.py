"""App factory of the gateway."""

from __future__ import annotations

from aiohttp import web

from gateway.settings import Settings
from libs.common.app import create_service_app
from libs.common.redis import redis_ctx


def create_app(settings: Settings) -> web.Application:
    # The gateway authenticates clients itself; it never trusts an identity header from them.
    app = create_service_app(settings, verify_identity=False)
    app.cleanup_ctx.append(redis_ctx(settings.redis_url))
    return app
