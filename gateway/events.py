"""The gateway's consumer of every bus event: purge the cache tags an event names and drop the
in-process auth caches it invalidates.

Each gateway process has its own broadcast queue (every instance holds its own caches), so an
event published once reaches every instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from libs.common.events import Event
from libs.common.events.consumer import ConsumerRuntime
from libs.common.events.options import BusOptions
from libs.common.events.topology import connect
from libs.common.events.wiring import DEFAULT_EXCHANGE, Consumers

__all__ = ["events_ctx", "gateway_consumers"]

_log = structlog.get_logger("portico.gateway.events")

# Events that change what an API key or a token may do: drop the in-process auth caches at once.
_AUTH_EVENTS = {
    "apikey.revoked": "apikey",
    "apikey.updated": "apikey",
    "session.revoked": "user",
    "user.updated": "user",
    "user.deleted": "user",
}


def gateway_consumers(gateway: Any) -> Consumers:
    """Handlers bound to `#` on a per-process broadcast queue."""
    consumers = Consumers("gateway", broadcast=True)

    @consumers.on("#")
    async def on_event(event: Event) -> None:
        kind = _AUTH_EVENTS.get(event.type)
        user_id = event.data.get("user_id")
        if kind is not None and isinstance(user_id, str):
            gateway.auth.on_revocation(kind, user_id)
        cache = gateway.cache
        if cache is not None:
            await cache.purge_event(event)

    return consumers


def events_ctx(settings: Any, gateway: Any) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: consume the bus unless disabled (or a test app kept the shared exchange)."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        if not settings.events_enabled or (
            settings.environment == "test" and settings.events_exchange == DEFAULT_EXCHANGE
        ):
            yield
            return
        consumers = gateway_consumers(gateway)
        connection = await connect(settings.rabbitmq_url, connection_name="gateway")
        runtime = ConsumerRuntime(
            queue=consumers.queue,
            bindings=consumers.bindings,
            connection=connection,
            exchange=settings.events_exchange,
            options=BusOptions.from_settings(settings),
            processed=None,
            broadcast=True,
        )

        async def rabbitmq_ready() -> object:
            if connection.is_closed or not connection.connected.is_set():
                raise ConnectionError("rabbitmq connection is down")
            return None

        gateway.readiness["rabbitmq"] = rabbitmq_ready
        try:
            await runtime.start()
            yield
        finally:
            gateway.readiness.pop("rabbitmq", None)
            with contextlib.suppress(Exception):
                await runtime.stop()
            with contextlib.suppress(Exception):
                await connection.close()

    return ctx
