"""App factory of the orgs service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from libs.common.app import create_service_app
from libs.common.events.wiring import OUTBOX, events_ctx
from libs.common.mongo import mongo_ctx
from services.orgs.events import consumers_for
from services.orgs.keys import ORGS
from services.orgs.models import DOCUMENTS
from services.orgs.routes import routes
from services.orgs.service import EmailFetcher, OrgService
from services.orgs.settings import Settings
from services.orgs.users_client import email_fetcher, users_http_ctx


def create_app(settings: Settings, *, fetch_email: EmailFetcher | None = None) -> web.Application:
    """The orgs service; `fetch_email` replaces the users-service lookup (None: HTTP)."""
    app = create_service_app(settings)
    app.cleanup_ctx.append(mongo_ctx(settings.mongodb_url, settings.mongodb_database, DOCUMENTS))
    # events_ctx needs app[MONGO], so it comes after mongo_ctx.
    app.cleanup_ctx.append(events_ctx(settings, source="orgs", consumers=consumers_for(app)))
    app.cleanup_ctx.append(users_http_ctx(settings.users_timeout))
    fetcher = fetch_email or email_fetcher(
        app, base_url=settings.users_url, secret=settings.internal_secret.get_secret_value()
    )

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ORGS] = OrgService(
            app[OUTBOX],
            invitation_ttl=timedelta(seconds=settings.invitation_ttl_seconds),
            fetch_email=fetcher,
        )
        yield

    app.cleanup_ctx.append(service_ctx)
    app.router.add_routes(routes)
    return app
