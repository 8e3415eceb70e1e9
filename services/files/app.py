"""App factory of the files service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from libs.common.app import add_readiness_check, create_service_app
from libs.common.events.wiring import OUTBOX, events_ctx
from libs.common.mongo import mongo_ctx
from services.files.events import build_consumers
from services.files.keys import CONSUMERS, FILES, STORAGE
from services.files.models import FileRecord, OrgMembership
from services.files.routes import routes
from services.files.service import FileService
from services.files.settings import Settings
from services.files.storage import ObjectStorage, create_storage

_log = structlog.get_logger("portico.files")


def create_app(settings: Settings, *, storage: ObjectStorage | None = None) -> web.Application:
    # Uploads are read from the stream by the handlers (never `request.read()`), so aiohttp's
    # body cap does not apply to them; it stays small for everything else.
    app = create_service_app(settings)
    storage = storage or create_storage(settings)
    app[STORAGE] = storage
    app[FILES] = FileService(settings=settings, storage=storage)
    app[CONSUMERS] = consumers = build_consumers(app)
    app.cleanup_ctx.append(
        mongo_ctx(settings.mongodb_url, settings.mongodb_database, [FileRecord, OrgMembership])
    )
    app.cleanup_ctx.append(_storage_ctx)
    # events_ctx needs app[MONGO]; the service needs the outbox events_ctx creates.
    app.cleanup_ctx.append(events_ctx(settings, source="files", consumers=consumers))
    app.cleanup_ctx.append(_bind_outbox)
    app.cleanup_ctx.append(_sweeper_ctx(settings.sweep_interval_seconds))
    app.add_routes(routes)
    return app


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    storage = app[STORAGE]
    await storage.start()

    async def check() -> None:
        await storage.exists("readiness-probe")

    add_readiness_check(app, "storage", check)
    yield
    await storage.close()


async def _bind_outbox(app: web.Application) -> AsyncIterator[None]:
    app[FILES].bind(app[OUTBOX])
    yield


def _sweeper_ctx(interval: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await app[FILES].sweep()
                except Exception:  # a failed sweep is retried at the next interval
                    _log.exception("sweep failed")

        task = asyncio.create_task(loop(), name="files-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
