"""How a service plugs into the bus: `events_ctx(...)` in its app, `Consumers` for its handlers.

    consumers = Consumers("orgs")

    @consumers.on("user.deleted")
    async def on_user_deleted(event: Event) -> None: ...

    app.cleanup_ctx.append(mongo_ctx(...))            # events_ctx needs app[MONGO]
    app.cleanup_ctx.append(events_ctx(settings, source="orgs", consumers=consumers))
    ...
    async with request.app[OUTBOX].transaction() as tx: ...

STUB: creates the outbox only; the relay and the consumers are added by the event-bus issue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from libs.common.events.envelope import Event
from libs.common.events.outbox import Outbox
from libs.common.mongo import MONGO
from libs.common.settings import BaseServiceSettings

__all__ = ["OUTBOX", "Consumers", "EventHandler", "events_ctx"]

EventHandler = Callable[[Event], Awaitable[None]]
OUTBOX = web.AppKey("outbox", Outbox)


class Consumers:
    """A service's handlers, bound by routing key (`user.deleted`, `org.*`) on its own queue."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.bindings: list[tuple[tuple[str, ...], EventHandler]] = []

    def on(self, *routing_keys: str) -> Callable[[EventHandler], EventHandler]:
        def register(handler: EventHandler) -> EventHandler:
            self.bindings.append((routing_keys, handler))
            return handler

        return register


def events_ctx(
    settings: BaseServiceSettings, *, source: str, consumers: Consumers | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the outbox (and, once built, its relay and the service's consumers)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        outbox = Outbox(app[MONGO], source)
        await outbox.ensure_indexes()
        app[OUTBOX] = outbox
        yield

    return ctx
