"""App factory of the users service."""

from __future__ import annotations

from aiohttp import web

from libs.common.app import create_service_app
from libs.common.mongo import mongo_ctx
from services.users.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = create_service_app(settings)
    app.cleanup_ctx.append(mongo_ctx(settings.mongodb_url, settings.mongodb_database, []))
    return app
