"""OutboxRelay: publishes a service's pending outbox entries, in `_id` order, with confirms.

One relay per service database is active at a time: replicas compete for a lease document in
`outbox_lock` (owner + expiry, renewed while publishing). A relay marks entries `sent` only after
the broker confirmed them, so a broker outage delays events but never loses them; a confirm lost in
a crash means the entry is published again, which idempotent consumers absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from pymongo.errors import DuplicateKeyError, PyMongoError

from libs.common.events.metrics import EVENTS_PUBLISHED, OUTBOX_PENDING
from libs.common.events.outbox import Outbox
from libs.common.events.topology import declare_exchange

__all__ = ["OutboxRelay", "envelope_body"]

_log = structlog.get_logger("portico.events.relay")
_STOP_TIMEOUT = 10.0
_LOCK_ID = "relay"


def envelope_body(entry: dict[str, Any]) -> bytes:
    """The contract envelope `{id, type, occurred_at, source, request_id, data}` as JSON."""
    occurred_at = entry["occurred_at"]
    if isinstance(occurred_at, datetime) and occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return orjson.dumps(
        {
            "id": entry["event_id"],
            "type": entry["type"],
            "occurred_at": occurred_at,
            "source": entry["source"],
            "request_id": entry.get("request_id"),
            "data": entry.get("data") or {},
        },
        option=orjson.OPT_UTC_Z,
    )


class OutboxRelay:
    """The background publisher of one service's outbox (`start()`, then `stop()`)."""

    def __init__(
        self,
        outbox: Outbox,
        connection: AbstractRobustConnection,
        *,
        exchange: str,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        lease_seconds: float = 10.0,
        retention: timedelta = timedelta(days=7),
        publish_timeout: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.outbox = outbox
        self.connection = connection
        self.exchange_name = exchange
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.retention = retention
        self.publish_timeout = publish_timeout
        self.max_backoff = max_backoff
        self.owner = uuid.uuid4().hex
        self.locks = outbox.mongo.database["outbox_lock"]
        self._exchange: AbstractExchange | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_until: datetime | None = None
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        self._last_count = datetime.min.replace(tzinfo=UTC)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the exchange and start publishing (plus the change-stream watcher)."""
        channel = await self.connection.channel(publisher_confirms=True)
        self._exchange = await declare_exchange(channel, self.exchange_name)
        self._tasks = [
            asyncio.create_task(self._run(), name="outbox-relay"),
            asyncio.create_task(self._watch(), name="outbox-watch"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks, wait for them, and give the lease up for a replica."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a driver call that swallows the cancellation must not hang a shutdown.
            _, stuck = await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT)
            if stuck:
                _log.warning("outbox relay tasks still running at stop", tasks=len(stuck))
        self._tasks = []
        if self._lease_until is not None:
            with contextlib.suppress(PyMongoError):
                await self.locks.delete_one({"_id": _LOCK_ID, "owner": self.owner})
            self._lease_until = None

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not await self._hold_lease():
                    await asyncio.sleep(self.lease_seconds / 3)
                    continue
                more = await self.publish_pending()
                await self._update_pending_gauge()
                await self._prune()
                backoff = 0.1
                if more:
                    continue
                await self._wait_for_work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: back off, then try again
                _log.warning("outbox relay failed, retrying", error=repr(exc), backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _wait_for_work(self) -> None:
        wakeup = self.outbox.wakeup
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), self.poll_interval)
        wakeup.clear()

    async def _hold_lease(self) -> bool:
        """Take or renew the lease; False while another live relay holds it."""
        now = datetime.now(UTC)
        if self._lease_until is not None and now < self._lease_until - timedelta(
            seconds=self.lease_seconds * 2 / 3
        ):
            return True  # renewed recently enough
        until = now + timedelta(seconds=self.lease_seconds)
        try:
            await self.locks.find_one_and_update(
                {"_id": _LOCK_ID, "$or": [{"owner": self.owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expires_at": until}},
                upsert=True,
            )
        except DuplicateKeyError:  # the lock exists and is held by someone else
            self._lease_until = None
            return False
        self._lease_until = until
        return True

    async def publish_pending(self) -> bool:
        """Publish one batch of pending entries; True when there may be more."""
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("relay not started")
        entries = (
            await self.outbox.collection.find({"status": "pending"})
            .sort("_id", 1)
            .limit(self.batch_size)
            .to_list()
        )
        if not entries:
            return False
        # All publishes of the batch go out in order on one channel and their confirms are awaited
        # together (pipelined); only confirmed entries are marked sent.
        results = await asyncio.gather(
            *(self._publish(exchange, entry) for entry in entries), return_exceptions=True
        )
        confirmed = [e for e, r in zip(entries, results, strict=True) if r is None]
        if confirmed:
            await self.outbox.collection.update_many(
                {"_id": {"$in": [e["_id"] for e in confirmed]}},
                {"$set": {"status": "sent", "sent_at": datetime.now(UTC)}},
            )
            for entry in confirmed:
                EVENTS_PUBLISHED.labels(type=entry["type"]).inc()
        failed = [(e, r) for e, r in zip(entries, results, strict=True) if r is not None]
        if failed:
            await self.outbox.collection.update_many(
                {"_id": {"$in": [e["_id"] for e, _ in failed]}}, {"$inc": {"attempts": 1}}
            )
            raise failed[0][1]
        return len(entries) == self.batch_size

    async def _publish(self, exchange: AbstractExchange, entry: dict[str, Any]) -> None:
        message = aio_pika.Message(
            envelope_body(entry),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=entry["event_id"],
            type=entry["type"],
            app_id=entry["source"],
            correlation_id=entry.get("request_id"),
        )
        await exchange.publish(message, routing_key=entry["type"], timeout=self.publish_timeout)

    async def _update_pending_gauge(self) -> None:
        # Counting is a scan of the pending entries: at most every couple of seconds.
        now = datetime.now(UTC)
        if now - self._last_count < timedelta(seconds=2):
            return
        self._last_count = now
        pending = await self.outbox.collection.count_documents({"status": "pending"})
        OUTBOX_PENDING.labels(source=self.outbox.source).set(pending)

    async def _prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(minutes=1):
            return
        self._last_prune = now
        result = await self.outbox.collection.delete_many(
            {"status": "sent", "sent_at": {"$lt": now - self.retention}}
        )
        if result.deleted_count:
            _log.info("pruned sent outbox entries", count=result.deleted_count)

    async def prune_now(self) -> int:
        """Delete sent entries older than the retention period (also runs once a minute)."""
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        before = await self.outbox.collection.count_documents({})
        await self._prune()
        return before - await self.outbox.collection.count_documents({})

    async def _watch(self) -> None:
        """Wake the relay on inserts by other processes (replicas) via a change stream, if any."""
        try:
            async with await self.outbox.collection.watch(
                [{"$match": {"operationType": "insert"}}]
            ) as stream:
                async for _ in stream:
                    self.outbox.wakeup.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no change streams (standalone server): the poll covers it
            _log.info("outbox change stream unavailable, polling", reason=repr(exc))
