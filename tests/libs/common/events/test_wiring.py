"""`events_ctx` and `consumers_ctx` inside a real app: start-up, readiness, request ids, broadcast
queues for the gateway, draining on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiormq
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.app import create_service_app
from libs.common.events import Event
from libs.common.events.wiring import (
    BUS,
    CONSUMER,
    OUTBOX,
    Consumers,
    consumers_ctx,
    events_ctx,
)
from libs.common.mongo import MONGO, Mongo, mongo_ctx
from libs.common.settings import BaseServiceSettings
from tests.libs.common.events.conftest import FAST, Bus, wait_until

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


def service_app(
    settings: BaseServiceSettings, consumers: Consumers | None, bus: Bus
) -> web.Application:
    app = create_service_app(settings)
    app.cleanup_ctx.append(mongo_ctx(settings.mongodb_url, settings.mongodb_database, []))
    app.cleanup_ctx.append(
        events_ctx(
            settings, source="users", consumers=consumers, options=FAST, connection_name=bus.name
        )
    )
    if consumers is not None:
        base = f"{settings.events_exchange}.{consumers.queue}"
        bus.extra_queues += [base, f"{base}.dlq"] + [
            f"{base}.retry.{n}" for n in range(1, FAST.max_attempts)
        ]
    return app


async def test_event_emitted_in_a_request_reaches_the_handler_with_its_request_id(
    aiohttp_client: MakeClient, settings: BaseServiceSettings, bus: Bus, mongo: Mongo
) -> None:
    consumers = Consumers("users")
    seen: list[tuple[Event, object]] = []

    @consumers.on("user.created")
    async def on_created(event: Event) -> None:
        seen.append((event, structlog.contextvars.get_contextvars().get("request_id")))

    app = service_app(settings, consumers, bus)

    async def register(request: web.Request) -> web.Response:
        async with request.app[OUTBOX].transaction() as tx:
            await request.app[MONGO].database["users"].insert_one({"n": 1}, session=tx.session)
            tx.emit("user.created", {"user_id": "u1"})
        return web.json_response({}, status=201)

    app.router.add_post("/register", register)
    client = await aiohttp_client(app)
    async with client.get("/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"]["rabbitmq"] == "ok"
    async with client.post("/register", headers={"X-Request-ID": "req-abc-123"}) as response:
        assert response.status == 201

    async def handled() -> bool:
        return len(seen) == 1

    await wait_until(handled, what="the handler")
    event, bound_request_id = seen[0]
    assert event.data == {"user_id": "u1"}
    assert event.request_id == "req-abc-123"
    assert bound_request_id == "req-abc-123"
    await client.close()
    assert client.app[BUS].is_closed


async def test_shutdown_lets_the_in_flight_handler_finish(
    aiohttp_client: MakeClient, settings: BaseServiceSettings, bus: Bus, mongo: Mongo
) -> None:
    consumers = Consumers("users")
    started, finished = asyncio.Event(), []

    @consumers.on("org.deleted")
    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(event.id)

    client = await aiohttp_client(service_app(settings, consumers, bus))
    async with client.app[OUTBOX].transaction() as tx:
        event = tx.emit("org.deleted", {"org_id": "o1"})
    await asyncio.wait_for(started.wait(), 30)
    await client.close()
    assert finished == [event.id]
    # It was acked and remembered, so no other replica runs it again.
    assert await mongo.database["processed_events"].count_documents({"event_id": event.id}) == 1


async def test_every_gateway_instance_gets_every_event(
    aiohttp_client: MakeClient, settings: BaseServiceSettings, bus: Bus, mongo: Mongo
) -> None:
    purged: dict[int, list[str]] = {0: [], 1: []}
    clients = []
    for instance in (0, 1):
        consumers = Consumers("gateway", broadcast=True)

        @consumers.on("#")
        async def purge(event: Event, instance: int = instance) -> None:
            purged[instance].append(event.id)

        app = create_service_app(settings)  # no mongo_ctx: broadcast needs no database
        app.cleanup_ctx.append(
            consumers_ctx(settings, consumers, options=FAST, connection_name=bus.name)
        )
        clients.append(await aiohttp_client(app))
    queues = [c.app[CONSUMER].queue_name for c in clients]
    assert queues[0] != queues[1]
    event = Event(type="user.updated", source="users", data={"user_id": "u1"})
    await bus.publish_raw(event.model_dump_json().encode(), event.type, message_id=event.id)

    async def both() -> bool:
        return purged == {0: [event.id], 1: [event.id]}

    await wait_until(both, what="both instances to purge")
    for client in clients:
        await client.close()
    # The instance queues went away with their connections.
    conn = await bus.connection()
    for name in queues:
        channel = await conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(name, passive=True)


async def test_test_apps_without_an_exchange_of_their_own_stay_off_the_shared_bus(
    aiohttp_client: MakeClient, settings: BaseServiceSettings, bus: Bus, mongo: Mongo
) -> None:
    shared = settings.model_copy(update={"events_exchange": "portico.events"})
    client = await aiohttp_client(service_app(shared, None, bus))
    assert OUTBOX in client.app
    assert BUS not in client.app
    async with client.get("/readyz") as response:
        assert "rabbitmq" not in (await response.json())["checks"]
