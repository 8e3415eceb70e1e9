"""MongoDB (PyMongo's async client) and Beanie wiring, as an aiohttp cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from beanie import Document, init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from libs.common.app import add_readiness_check
from libs.common.logging import mask_url

__all__ = ["MONGO", "Mongo", "connect_mongo", "mongo_ctx"]

_log = structlog.get_logger("portico.mongo")


class Mongo:
    """The client and this service's database."""

    def __init__(self, client: AsyncMongoClient[Any], database: AsyncDatabase[Any]) -> None:
        self.client = client
        self.database = database

    async def ping(self) -> None:
        await self.database.command("ping")


MONGO = web.AppKey("mongo", Mongo)


async def connect_mongo(
    url: str, database: str, models: Sequence[type[Document]], *, timeout_ms: int = 5000
) -> Mongo:
    """Connect, initialise Beanie for `models` (creating their indexes) and return the handle."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 4, 20000),
        uuidRepresentation="standard",
    )
    db = client[database]
    await init_beanie(database=db, document_models=list(models))
    _log.info("mongodb connected", url=mask_url(url), database=database)
    return Mongo(client, db)


def mongo_ctx(
    url: str, database: str, models: Sequence[type[Document]]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: connect on start-up, register the readiness check, close on shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        mongo = await connect_mongo(url, database, models)
        app[MONGO] = mongo
        add_readiness_check(app, "mongodb", mongo.ping)
        yield
        await mongo.client.close()

    return ctx
