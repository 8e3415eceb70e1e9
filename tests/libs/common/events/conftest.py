"""Fixtures of the event-bus tests: a service database, a broker exchange of the test's own, and a
`Bus` harness that runs relays and consumers on named connections and deletes its topology."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from libs.common.events import BusOptions, ConsumerRuntime, Outbox, OutboxRelay
from libs.common.events.consumer import EventHandler
from libs.common.events.topology import connect
from libs.common.mongo import Mongo, connect_mongo
from libs.common.settings import BaseServiceSettings
from tests.conftest import TEST_SECRET

# Short backoffs so retries finish quickly; the shape (retry queues, DLQ) is the production one.
FAST = BusOptions(
    max_attempts=4,
    retry_base_delay=0.05,
    retry_max_delay=0.2,
    poll_interval=0.5,
    lease_seconds=3.0,
    dlq_poll_interval=0.2,
    drain_timeout=5.0,
)


@pytest.fixture
async def mongo(mongo_url: str, db_name: str) -> AsyncIterator[Mongo]:
    handle = await connect_mongo(mongo_url, db_name, [])
    yield handle
    await handle.client.drop_database(db_name)
    await handle.client.close()


@pytest.fixture
def exchange(unique: str) -> str:
    return f"test.events.{unique}"


@pytest.fixture
def settings(mongo_url: str, db_name: str, exchange: str, rabbitmq_url: str) -> BaseServiceSettings:
    return BaseServiceSettings(
        mongodb_url=mongo_url,
        mongodb_database=db_name,
        rabbitmq_url=rabbitmq_url,
        events_exchange=exchange,
        environment="test",
        internal_secret=TEST_SECRET,
    )


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll `condition` until true; fail (not hang) after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "--quiet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {err.decode()[:300]}")
    return out.decode()


async def close_connections_named(name: str) -> int:
    """Close, from the broker side, only the connections whose client named them `name`."""
    listing = await rabbitmqctl(
        "list_connections", "pid", "client_properties", "--no-table-headers"
    )
    closed = 0
    for line in listing.splitlines():
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in props:
            await rabbitmqctl("close_connection", pid.strip(), "test: broker-side cut")
            closed += 1
    return closed


@dataclass
class Bus:
    """Relays and consumers of one test, on connections named after it."""

    url: str
    exchange: str
    name: str
    connections: list[AbstractRobustConnection] = field(default_factory=list)
    relays: list[OutboxRelay] = field(default_factory=list)
    runtimes: list[ConsumerRuntime] = field(default_factory=list)
    extra_queues: list[str] = field(default_factory=list)

    async def connection(self) -> AbstractRobustConnection:
        conn = await connect(self.url, connection_name=self.name)
        self.connections.append(conn)
        return conn

    async def relay(self, outbox: Outbox, *, options: BusOptions = FAST) -> OutboxRelay:
        relay = OutboxRelay(
            outbox,
            await self.connection(),
            exchange=self.exchange,
            poll_interval=options.poll_interval,
            lease_seconds=options.lease_seconds,
        )
        await relay.start()
        self.relays.append(relay)
        return relay

    async def consumer(
        self,
        queue: str,
        bindings: list[tuple[tuple[str, ...], EventHandler]],
        *,
        mongo: Mongo | None,
        options: BusOptions = FAST,
        broadcast: bool = False,
        connection: AbstractRobustConnection | None = None,
    ) -> ConsumerRuntime:
        runtime = ConsumerRuntime(
            queue=queue,
            bindings=bindings,
            connection=connection or await self.connection(),
            exchange=self.exchange,
            options=options,
            processed=None if mongo is None else mongo.database["processed_events"],
            broadcast=broadcast,
        )
        await runtime.start()
        self.runtimes.append(runtime)
        return runtime

    async def publish_raw(self, body: bytes, routing_key: str, **props: Any) -> None:
        """Publish like a relay would (used to simulate a double publish)."""
        conn = await self.connection()
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(aio_pika.Message(body, **props), routing_key=routing_key)
        await channel.close()

    async def depth(self, name: str) -> int:
        """How many messages queue `name` holds now."""
        conn = self.connections[0] if self.connections else await self.connection()
        channel = await conn.channel()
        queue = await channel.declare_queue(name, passive=True)
        await channel.close()
        return queue.declaration_result.message_count or 0

    async def queue_messages(self, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take every message currently in queue `name` (acked: it is a test queue)."""
        conn = await self.connection()
        channel = await conn.channel()
        queue = await channel.declare_queue(name, passive=True)
        messages = []
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            messages.append(message)
        await channel.close()
        return messages

    async def close(self) -> None:
        for runtime in self.runtimes:
            await _bounded(runtime.stop(), f"consumer {runtime.queue_name} stop")
        for relay in self.relays:
            await _bounded(relay.stop(), "relay stop")
        conn = await connect(self.url, connection_name=f"{self.name}-cleanup")
        try:
            channel = await conn.channel()
            for runtime in self.runtimes:
                if not runtime.broadcast:
                    await runtime.delete_topology()
            for name in self.extra_queues:
                await channel.queue_delete(name)
            await channel.exchange_delete(self.exchange)
        finally:
            await conn.close()
        for c in self.connections:
            await _bounded(c.close(), "connection close")


async def _bounded(step: Awaitable[None], what: str, timeout: float = 45.0) -> None:
    """A teardown step that hangs fails the test loudly instead of hanging the whole run.

    Generous: a consumer's stop is itself bounded (cancel, drain, close: up to 5 s each with
    the test options), and a loaded CI box stretches every step."""
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        raise AssertionError(f"teardown: {what} did not finish in {timeout} s") from None


@pytest.fixture
async def bus(rabbitmq_url: str, exchange: str, unique: str) -> AsyncIterator[Bus]:
    harness = Bus(url=rabbitmq_url, exchange=exchange, name=f"portico-test-{unique}")
    yield harness
    await harness.close()
