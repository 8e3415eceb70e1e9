"""The gateway's admin listener: cache purges by tag or key, away from the public port.

It runs only when `PORTICO_GATEWAY_ADMIN_TOKEN` is set, on `ADMIN_HOST:ADMIN_PORT`
(127.0.0.1:9180 by default: reachable from the pod, never through the public routes), and every
purge needs `Authorization: Bearer <ADMIN_TOKEN>`. A purge reaches every gateway worker and
instance: entries live in Redis, and the purge is published to the in-process L1 caches.

    POST /admin/cache/purge  {"tags": ["user:42", "org:7"], "keys": ["<entry key>"]}
    -> 200 {"tags": 2, "purged_entries": 5, "purged_keys": 1}
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from gateway.settings import Settings
from gateway.stages import CacheStageLike
from libs.common.app import create_service_app
from libs.common.errors import Conflict, Forbidden, Unauthenticated
from libs.common.http import json_response, parse

__all__ = ["ADMIN_PORT", "admin_ctx"]

ADMIN_PORT = web.AppKey("admin_port", int)  # the bound port (ADMIN_PORT=0 picks a free one)
CacheLookup = Callable[[], CacheStageLike | None]
_CACHE: web.AppKey[CacheLookup] = web.AppKey("admin_cache")
_TOKEN = web.AppKey("admin_token", bytes)
_TAG = r"^[!-~]{1,200}$"  # a Surrogate-Key tag: visible ASCII, no spaces

_log = structlog.get_logger("portico.gateway.admin")


Token = Annotated[str, StringConstraints(pattern=_TAG)]


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[Token] = Field(default_factory=list, max_length=1000)
    keys: list[Token] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _names_a_tag_or_key(self) -> PurgeRequest:
        if not self.tags and not self.keys:
            raise ValueError("name at least one tag or key")
        return self


def _authorize(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the admin token is required")
    if not hmac.compare_digest(token.encode(), request.app[_TOKEN]):
        raise Forbidden("this admin token is not valid")


async def purge(request: web.Request) -> web.Response:
    _authorize(request)
    body = await parse(request, PurgeRequest)
    stage = request.app[_CACHE]()
    if stage is None:
        raise Conflict("the response cache is not enabled on this gateway")
    entries = await stage.purge_tags(body.tags, reason="admin") if body.tags else 0
    keys = [await stage.purge_key(key) for key in body.keys]
    _log.info("cache purged by admin", tags=len(body.tags), keys=len(body.keys), entries=entries)
    return json_response(
        {"tags": len(body.tags), "purged_entries": entries, "purged_keys": sum(keys)}
    )


def admin_ctx(
    settings: Settings, cache: Callable[[], CacheStageLike | None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx of the public app: the admin listener alongside it (when a token is set)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.admin_token is None:
            yield
            return
        admin = create_service_app(settings, verify_identity=False)
        admin[_CACHE] = cache
        admin[_TOKEN] = settings.admin_token.get_secret_value().encode()
        admin.router.add_post("/admin/cache/purge", purge)
        runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        await runner.setup()
        # Every worker process binds the same admin port, as they do the public one.
        site = web.TCPSite(runner, settings.admin_host, settings.admin_port, reuse_port=True)
        await site.start()
        # The bound port (ADMIN_PORT=0 picks one); asyncio and uvloop servers both list sockets.
        sockets = getattr(site._server, "sockets", None) or ()
        app[ADMIN_PORT] = sockets[0].getsockname()[1] if sockets else settings.admin_port
        _log.info("admin listener", host=settings.admin_host, port=app[ADMIN_PORT])
        try:
            yield
        finally:
            await runner.cleanup()

    return ctx
