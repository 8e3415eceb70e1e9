"""Broker topology: the events exchange, and each consumer's queue with its retry and DLQ queues.

    <exchange> (topic, durable) --routing key = event type--> <queue>
    <queue> --handler failed, attempt n--> <queue>.retry.<n> (x-message-ttl = backoff(n))
    <queue>.retry.<n> --TTL expired, dead-lettered via the default exchange--> <queue>
    <queue> --attempt == max_attempts or malformed--> <queue>.dlq (reason in headers)

Retries wait in the broker, not in a sleeping handler, so the main queue keeps flowing.
"""

from __future__ import annotations

import os
import socket

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

__all__ = [
    "connect",
    "declare_exchange",
    "default_connection_name",
    "retry_delays",
]


def default_connection_name(source: str) -> str:
    """`<source>@<host>:<pid>`: how this process shows up in the broker's connection list."""
    return f"{source}@{socket.gethostname()}:{os.getpid()}"


async def connect(url: str, *, connection_name: str) -> AbstractRobustConnection:
    """A robust connection: reconnects and re-declares its channels, queues and consumers."""
    return await aio_pika.connect_robust(
        url,
        client_properties={"connection_name": connection_name},
        reconnect_interval=0.5,
        timeout=10,
    )


async def declare_exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    """The durable topic exchange every event goes through."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


def retry_delays(*, max_attempts: int, base_delay: float, max_delay: float) -> list[float]:
    """Backoff before attempt 2..max_attempts: base, 2*base, 4*base, ... capped at max_delay."""
    return [min(base_delay * 2**n, max_delay) for n in range(max(max_attempts - 1, 0))]
