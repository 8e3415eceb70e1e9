"""Bus wiring: every event on `portico.events` purges the cache tags it names.

Each gateway instance must consume on a queue of its own (every instance holds its own L1 and
must see every purge), e.g. `gateway.cache.<instance id>`, auto-deleted when it goes away.
"""

from __future__ import annotations

from gateway.cache.stage import CacheStage
from libs.common.events import Event
from libs.common.events.wiring import Consumers

__all__ = ["purge_consumers"]


def purge_consumers(stage: CacheStage, *, queue: str) -> Consumers:
    """Consumers bound to every routing key (`#`) that purge the event's tags (idempotent)."""
    consumers = Consumers(queue)

    @consumers.on("#")
    async def purge(event: Event) -> None:
        await stage.purge_event(event)

    return consumers
