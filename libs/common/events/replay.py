"""Replay parked events: move what a consumer's `<queue>.dlq` holds back to `<queue>`, once the
cause is fixed (`portico events replay-dlq <queue>`).

Each message goes back to its own queue only, through the default exchange (not the topic
exchange: the other services already handled it), with its failure headers removed so it gets
every attempt again, and its original routing key kept (the consumer dispatches on it). It is
acked in the DLQ only after the broker confirmed the copy: a crash in between duplicates it (the
consumer's processed ids absorb that), never loses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection

from libs.common.events.consumer import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    FAILED_AT_HEADER,
    persistent_copy,
)

__all__ = ["REPLAYED_AT_HEADER", "replay_dead_letters"]

REPLAYED_AT_HEADER = "x-portico-replayed-at"


async def replay_dead_letters(
    connection: AbstractConnection, queue: str, *, limit: int | None = None
) -> int:
    """Move up to `limit` (default: all) messages of `<queue>.dlq` back to `queue`; returns how
    many moved. Both queues must exist (a typo must not create an empty one)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        await channel.declare_queue(queue, passive=True)
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
        moved = 0
        while limit is None or moved < limit:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                break
            headers: dict[str, Any] = dict(message.headers or {})
            for name in (ATTEMPT_HEADER, ERROR_HEADER, FAILED_AT_HEADER):
                headers.pop(name, None)
            headers[REPLAYED_AT_HEADER] = datetime.now(UTC).isoformat()
            await channel.default_exchange.publish(
                persistent_copy(message, headers), routing_key=queue, timeout=10
            )
            await message.ack()
            moved += 1
        return moved
    finally:
        await channel.close()
