"""How a service plugs into the bus: `events_ctx(...)` in its app, `Consumers` for its handlers.

    consumers = Consumers("orgs")

    @consumers.on("user.deleted")
    async def on_user_deleted(event: Event) -> None: ...

    app.cleanup_ctx.append(mongo_ctx(...))            # events_ctx needs app[MONGO]
    app.cleanup_ctx.append(events_ctx(settings, source="orgs", consumers=consumers))
    ...
    async with request.app[OUTBOX].transaction() as tx: ...

The gateway, which has no database, uses `consumers_ctx(settings, Consumers("gateway",
broadcast=True))`: each instance gets its own exclusive queue, so every instance sees every event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import structlog
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from libs.common.app import add_readiness_check
from libs.common.events.consumer import ConsumerRuntime, EventHandler
from libs.common.events.options import BusOptions
from libs.common.events.outbox import Outbox
from libs.common.events.relay import OutboxRelay
from libs.common.events.topology import connect, default_connection_name
from libs.common.mongo import MONGO
from libs.common.settings import BaseServiceSettings

__all__ = [
    "BUS",
    "CONSUMER",
    "DEFAULT_EXCHANGE",
    "OUTBOX",
    "RELAY",
    "Consumers",
    "EventHandler",
    "consumers_ctx",
    "events_ctx",
]

DEFAULT_EXCHANGE = "portico.events"
OUTBOX = web.AppKey("outbox", Outbox)
RELAY = web.AppKey("outbox_relay", OutboxRelay)
CONSUMER = web.AppKey("event_consumer", ConsumerRuntime)
BUS = web.AppKey("event_bus_connection", AbstractRobustConnection)

_log = structlog.get_logger("portico.events")


class Consumers:
    """A service's handlers, bound by routing key (`user.deleted`, `org.*`) on its own queue.

    `broadcast=True` gives every process its own exclusive, auto-deleted queue (no retry queues,
    no idempotency store): for work every instance must do, such as gateway cache purges.
    """

    def __init__(self, queue: str, *, broadcast: bool = False) -> None:
        self.queue = queue
        self.broadcast = broadcast
        self.bindings: list[tuple[tuple[str, ...], EventHandler]] = []

    def on(self, *routing_keys: str) -> Callable[[EventHandler], EventHandler]:
        """Register `handler` for events whose type matches any of the topic patterns."""

        def register(handler: EventHandler) -> EventHandler:
            self.bindings.append((routing_keys, handler))
            return handler

        return register


def _bus_enabled(settings: BaseServiceSettings, connect_bus: bool | None) -> bool:
    if connect_bus is not None:
        return connect_bus
    # Test apps that did not pick an exchange of their own would share `portico.events` (and its
    # queues) with every other test running in parallel; they get the outbox only.
    return not (settings.environment == "test" and settings.events_exchange == DEFAULT_EXCHANGE)


async def _connect(
    app: web.Application, settings: BaseServiceSettings, name: str
) -> AbstractRobustConnection:
    connection = await connect(settings.rabbitmq_url, connection_name=name)
    app[BUS] = connection

    async def rabbitmq_ready() -> None:
        if connection.is_closed or not connection.connected.is_set():
            raise ConnectionError("rabbitmq connection is down")

    add_readiness_check(app, "rabbitmq", rabbitmq_ready)
    return connection


async def _close(connection: AbstractRobustConnection) -> None:
    # A broker that stopped answering must not hold up the process's shutdown.
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (TimeoutError, OSError) as exc:
        _log.warning("rabbitmq connection not closed cleanly", reason=repr(exc))


def events_ctx(
    settings: BaseServiceSettings,
    *,
    source: str,
    consumers: Consumers | None = None,
    options: BusOptions | None = None,
    connection_name: str | None = None,
    connect_bus: bool | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the outbox, its relay, and the service's consumers (after mongo_ctx).

    `connect_bus=None` connects except in `environment="test"` with the default exchange.
    """
    opts = options or BusOptions.from_settings(settings)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        mongo = app[MONGO]
        outbox = Outbox(mongo, source)
        await outbox.ensure_indexes()
        app[OUTBOX] = outbox
        if not _bus_enabled(settings, connect_bus):
            _log.info("event bus not connected (test settings without an exchange of their own)")
            yield
            return
        connection = await _connect(
            app, settings, connection_name or default_connection_name(source)
        )
        relay = OutboxRelay(
            outbox,
            connection,
            exchange=settings.events_exchange,
            batch_size=opts.batch_size,
            poll_interval=opts.poll_interval,
            lease_seconds=opts.lease_seconds,
            retention=timedelta(seconds=opts.retention),
        )
        runtime: ConsumerRuntime | None = None
        try:
            await relay.start()
            app[RELAY] = relay
            if consumers is not None:
                runtime = ConsumerRuntime(
                    queue=consumers.queue,
                    bindings=consumers.bindings,
                    connection=connection,
                    exchange=settings.events_exchange,
                    options=opts,
                    processed=None if consumers.broadcast else mongo.database["processed_events"],
                    broadcast=consumers.broadcast,
                )
                await runtime.start()
                app[CONSUMER] = runtime
            yield
        finally:
            # Consumers first (their handlers may still write and emit), then the relay.
            if runtime is not None:
                await runtime.stop()
            await relay.stop()
            await _close(connection)

    return ctx


def consumers_ctx(
    settings: BaseServiceSettings,
    consumers: Consumers,
    *,
    options: BusOptions | None = None,
    connection_name: str | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: consumers without an outbox; broadcast consumers need no app[MONGO]."""
    opts = options or BusOptions.from_settings(settings)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        processed = None if consumers.broadcast else app[MONGO].database["processed_events"]
        connection = await _connect(
            app, settings, connection_name or default_connection_name(consumers.queue)
        )
        runtime = ConsumerRuntime(
            queue=consumers.queue,
            bindings=consumers.bindings,
            connection=connection,
            exchange=settings.events_exchange,
            options=opts,
            processed=processed,
            broadcast=consumers.broadcast,
        )
        try:
            await runtime.start()
            app[CONSUMER] = runtime
            yield
        finally:
            await runtime.stop()
            await _close(connection)

    return ctx
