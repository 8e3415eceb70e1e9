"""Transactional outbox: a state change and its events commit together or not at all.

    async with outbox.transaction() as tx:
        await user.insert(session=tx.session)
        tx.emit("user.created", {"user_id": str(user.id)})

The entries are inserted in the same MongoDB transaction right before it commits; the relay
(`libs.common.events.relay`) publishes them afterwards with publisher confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import OperationFailure, PyMongoError

from libs.common.errors import Conflict
from libs.common.events.envelope import EVENT_TYPES, Event, _now
from libs.common.events.handling import current_handler_transaction
from libs.common.mongo import Mongo
from libs.common.transient import is_transient_conflict

T = TypeVar("T")
_DROPPED_INDEX = "event_id_1"  # the unique index of earlier versions

__all__ = ["OUTBOX_INDEXES", "Outbox", "OutboxEntry", "Transaction"]


class OutboxEntry(BaseModel):
    """An event waiting to be (or already) published. `_id` order is publication order.

    Stored with the raw driver in the service's `outbox` collection (not a Beanie document), so
    the outbox works the same whatever document models a service binds.
    """

    event_id: str
    type: str
    occurred_at: datetime
    source: str
    request_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    status: str = "pending"  # pending -> sent
    created_at: datetime = Field(default_factory=_now)
    sent_at: datetime | None = None
    attempts: int = 0

    @classmethod
    def from_event(cls, event: Event) -> OutboxEntry:
        return cls(
            event_id=event.id,
            type=event.type,
            occurred_at=event.occurred_at,
            source=event.source,
            request_id=event.request_id,
            data=event.data,
        )

    def to_event(self) -> Event:
        return Event(
            id=self.event_id,
            type=self.type,
            occurred_at=self.occurred_at,
            source=self.source,
            request_id=self.request_id,
            data=self.data,
        )


# No index on `event_id`: nothing looks an entry up by it, and every index is paid for on each
# insert and each "sent" update (on SecantusDB a unique one costs ~0.4 ms per event).
OUTBOX_INDEXES = [
    IndexModel([("status", ASCENDING), ("_id", ASCENDING)]),
    IndexModel([("sent_at", ASCENDING)]),
]


class Transaction:
    """A MongoDB transaction that can also emit events."""

    def __init__(self, session: AsyncClientSession, source: str, request_id: str | None) -> None:
        self.session = session
        self.source = source
        self.request_id = request_id
        self.events: list[Event] = []

    def emit(self, type: str, data: dict[str, Any]) -> Event:
        """Queue an event; it is written to the outbox only if the transaction commits."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = Event(type=type, source=self.source, request_id=self.request_id, data=data)
        self.events.append(event)
        return event


class Outbox:
    """Opens transactions for one service and wakes its relay after each commit."""

    def __init__(self, mongo: Mongo, source: str, *, collection: str = "outbox") -> None:
        self.mongo = mongo
        self.source = source
        self.collection = mongo.database[collection]
        self.wakeup = asyncio.Event()

    async def ensure_indexes(self) -> None:
        await self.collection.create_indexes(OUTBOX_INDEXES)
        if _DROPPED_INDEX in await self.collection.index_information():
            with contextlib.suppress(OperationFailure):  # a replica starting too dropped it
                await self.collection.drop_index(_DROPPED_INDEX)

    async def atomic(
        self,
        body: Callable[[Transaction], Awaitable[T]],
        *,
        request_id: str | None = None,
        attempts: int = 10,
    ) -> T:
        """Run `body` in a transaction with this outbox, again on a transient write conflict.

        `body` must do all its reads with `tx.session`, so a retry re-checks every rule against
        the state that won the race. After `attempts` lost races: 409 `CONFLICT`. Inside an
        event handler the transaction is the handler's (joined): a conflict aborts all of it, so
        the consumer re-runs the whole handler instead.
        """
        if current_handler_transaction() is not None:
            async with self.transaction(request_id=request_id) as tx:
                return await body(tx)
        for attempt in range(attempts):
            try:
                async with self.transaction(request_id=request_id) as tx:
                    result = await body(tx)
                return result
            except PyMongoError as exc:
                if not is_transient_conflict(exc):
                    raise
                if attempt == attempts - 1:
                    raise Conflict("the resource was changed concurrently; try again") from None
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311 - jitter
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def transaction(self, *, request_id: str | None = None) -> AsyncIterator[Transaction]:
        """Commit everything done with `tx.session` plus the emitted events, atomically."""
        if request_id is None:
            request_id = structlog.contextvars.get_contextvars().get("request_id")
        joined = current_handler_transaction()
        if joined is not None and joined.session.client is self.mongo.client:
            # Inside an event handler: join its transaction, so the state change, these events
            # and the handled event's "processed" record commit together.
            tx = Transaction(joined.session, self.source, request_id)
            yield tx
            if tx.events:
                await self._insert(tx.events, joined.session)
                joined.after_commit.append(self.wakeup.set)
            return
        async with (
            self.mongo.client.start_session() as session,
            await session.start_transaction(),
        ):
            tx = Transaction(session, self.source, request_id)
            yield tx
            if tx.events:
                await self._insert(tx.events, session)
        if tx.events:
            self.wakeup.set()

    async def _insert(self, events: list[Event], session: AsyncClientSession) -> None:
        entries = [OutboxEntry.from_event(e).model_dump() for e in events]
        if len(entries) == 1:  # the common case; the driver's bulk path costs more per call
            await self.collection.insert_one(entries[0], session=session)
        else:
            await self.collection.insert_many(entries, session=session)
