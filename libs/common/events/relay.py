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
import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pymongo import UpdateMany
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from libs.common.events.metrics import EVENTS_PUBLISHED, OUTBOX_PENDING
from libs.common.events.outbox import Outbox
from libs.common.events.topology import declare_exchange

__all__ = ["OutboxRelay", "envelope_body"]

_log = structlog.get_logger("portico.events.relay")
_STOP_TIMEOUT = 10.0
_LOCK_ID = "relay"
# SecantusDB matches each candidate document against the whole `$in` list, so one `$in` of n ids
# costs O(n^2): the ids of a batch go out in slices of this size, in a single bulk write.
_IN_SLICE = 50
# "$changeStream is only supported on replica sets" (40573), CommandNotSupported (115) and
# "Unrecognized pipeline stage" (40324): a standalone mongod or a server without change streams;
# polling is all there is.
_NO_CHANGE_STREAMS = frozenset({40573, 115, 40324})
_COUNT_EVERY = timedelta(seconds=5)  # the pending count while the relay is behind


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
        watch_pause: float = 0.02,
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
        self.watch_pause = watch_pause
        self.owner = uuid.uuid4().hex
        self.locks = outbox.mongo.database["outbox_lock"]
        self._channel: AbstractChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_until: datetime | None = None
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        self._last_count = datetime.min.replace(tzinfo=UTC)
        self._last_drained = datetime.min.replace(tzinfo=UTC)
        self._counting: asyncio.Task[None] | None = None
        self._drained = False
        self._waiting = asyncio.Event()  # the relay holds the lease and waits for work
        self._marking: asyncio.Task[None] | None = None  # the batch being marked sent
        self._marking_after: Any = None  # the last `_id` of that batch
        self._last_full_read = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the exchange and start publishing (plus the change-stream watcher)."""
        channel = await self.connection.channel(publisher_confirms=True)
        await declare_exchange(channel, self.exchange_name)
        self._channel = channel
        self._tasks = [
            asyncio.create_task(self._run(), name="outbox-relay"),
            asyncio.create_task(self._watch(), name="outbox-watch"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks, wait for them, and give the lease up for a replica."""
        if self._counting is not None:
            self._tasks.append(self._counting)
            self._counting = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a driver call that swallows the cancellation must not hang a shutdown.
            _, stuck = await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT)
            if stuck:
                _log.warning("outbox relay tasks still running at stop", tasks=len(stuck))
        self._tasks = []
        if self._marking is not None:
            # Confirmed by the broker: marking them now saves publishing them again.
            _, stuck = await asyncio.wait([self._marking], timeout=_STOP_TIMEOUT)
            if stuck:
                self._marking.cancel()
            else:
                with contextlib.suppress(Exception):  # they stay pending: published again
                    self._marking.result()
            self._marking = None
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
        self._waiting.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self.poll_interval)
        finally:
            self._waiting.clear()
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
        """Publish one batch of pending entries; True when there may be more.

        The batch is marked sent in the background while the next one is read and published
        (marking costs the database more than anything else the relay does), one batch at a
        time and in order; `stop()` lets the last marking finish.
        """
        if self._channel is None:
            raise RuntimeError("relay not started")
        query: dict[str, Any] = {"status": "pending"}
        now = asyncio.get_running_loop().time()
        if self._marking is not None:
            if self._marking.done() or now - self._last_full_read > self.poll_interval:
                await self._settle_marking()
            else:
                # The batch being marked still reads "pending": continue after it. An entry of a
                # transaction that committed after the read that passed its `_id` is found by
                # the next read from the start (the marking done, or `poll_interval` later).
                query["_id"] = {"$gt": self._marking_after}
        if "_id" not in query:
            self._last_full_read = now
        entries = (
            await self.outbox.collection.find(query)
            .sort("_id", 1)
            .limit(self.batch_size)
            .batch_size(self.batch_size)  # one round trip, not 101 documents and a getMore
            .to_list()
        )
        if not entries:
            await self._settle_marking()
            if "_id" in query:
                return True  # nothing after the batch being marked: read once more from the start
            self._drained = True
            return False
        # All publishes of the batch go out in order on one channel and their confirms are awaited
        # together (pipelined); only confirmed entries are marked sent.
        async with asyncio.timeout(self.publish_timeout):  # the broker may be reconnecting
            channel = await self._channel.get_underlay_channel()
        if not isinstance(channel, aiormq.Channel):
            raise TypeError(f"unexpected AMQP channel {type(channel).__name__}")
        results = await asyncio.gather(
            *(self._publish(channel, entry) for entry in entries), return_exceptions=True
        )
        await self._settle_marking()  # the previous batch first
        confirmed = [e for e, r in zip(entries, results, strict=True) if r is None]
        failed = [(e, r) for e, r in zip(entries, results, strict=True) if r is not None]
        if confirmed:
            marking = self._mark_sent(confirmed)
            if failed:
                await marking
            else:
                self._marking = asyncio.create_task(marking, name="outbox-mark-sent")
                self._marking_after = entries[-1]["_id"]
        if failed:
            await self._update_each([e for e, _ in failed], {"$inc": {"attempts": 1}})
            raise failed[0][1]
        full = len(entries) == self.batch_size
        if not full:
            # Everything that was pending has just been sent: no need to count (a scan) for the
            # gauge. Entries committed since the query are picked up by the next wake-up.
            self._drained = True
        return full

    async def _mark_sent(self, entries: list[dict[str, Any]]) -> None:
        await self._update_each(entries, {"$set": {"status": "sent", "sent_at": datetime.now(UTC)}})
        for entry in entries:
            EVENTS_PUBLISHED.labels(type=entry["type"]).inc()

    async def _settle_marking(self) -> None:
        """Wait for the batch being marked sent; raise what marking it raised."""
        task = self._marking
        if task is None:
            return
        try:
            # Shielded: a relay cancelled here (stop) leaves the marking to `stop()` to wait for.
            await asyncio.shield(task)
        finally:
            if task.done():
                self._marking = None

    async def _update_each(self, entries: list[dict[str, Any]], update: dict[str, Any]) -> None:
        """Apply `update` to these entries in one round trip (see `_IN_SLICE`)."""
        ids = [e["_id"] for e in entries]
        await self.outbox.collection.bulk_write(
            [
                UpdateMany({"_id": {"$in": ids[i : i + _IN_SLICE]}}, update)
                for i in range(0, len(ids), _IN_SLICE)
            ],
            ordered=False,
        )

    async def _publish(self, channel: aiormq.Channel, entry: dict[str, Any]) -> None:
        message = aio_pika.Message(
            envelope_body(entry),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=entry["event_id"],
            type=entry["type"],
            app_id=entry["source"],
            correlation_id=entry.get("request_id"),
        )
        # What `Exchange.publish` does, but with `wait=False`: the channel lock is released once
        # the frames are queued instead of once they reached the socket, so a batch is queued in
        # one pass of the event loop, not two passes per message (which on a busy loop made
        # publishing 200 entries take most of a second). The broker's confirm is still awaited.
        await channel.basic_publish(
            message.body,
            exchange=self.exchange_name,
            routing_key=entry["type"],
            properties=message.properties,
            mandatory=True,
            timeout=self.publish_timeout,
            wait=False,
        )

    async def _update_pending_gauge(self) -> None:
        now = datetime.now(UTC)
        if self._drained:
            self._drained = False
            self._last_drained = now
            OUTBOX_PENDING.labels(source=self.outbox.source).set(0)
            return
        # Behind: count. That is a scan of every pending entry (a 1,000-entry backlog took the
        # database ~0.3 s), so now and then and beside the relay, not in its way.
        if now - self._last_count < _COUNT_EVERY or (
            self._counting is not None and not self._counting.done()
        ):
            return
        self._last_count = now
        self._counting = asyncio.create_task(self._count_pending(now), name="outbox-count")

    async def _count_pending(self, started: datetime) -> None:
        try:
            pending = await self.outbox.collection.count_documents({"status": "pending"})
        except PyMongoError as exc:  # the gauge keeps its last value
            _log.debug("outbox pending count failed", reason=repr(exc))
            return
        if self._last_drained < started:  # not outdated by a drain seen meanwhile
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
        """Wake the relay on inserts by other processes (replicas) via a change stream, if any.

        Read only while the relay holds the lease and waits for work: a busy relay looks for more
        entries anyway, and the others do not publish. A waiting getMore is answered on any write
        to the database, mostly with nothing for us (SecantusDB), so after an empty answer the
        next one waits `watch_pause`, not one round trip per write of any service.

        A stream lost with the database (longer than the driver's own resume), or ended by the
        server, is opened again with backoff (which starts over once a stream has lasted
        `max_backoff`: a flapping one is not reopened ten times a second); once a read on the new
        one works, the relay looks once for what was committed meanwhile (the poll covers the gap
        until then). A server without change streams (standalone) is polled for good.
        """
        loop = asyncio.get_running_loop()
        backoff = 0.1
        lost = False
        while True:
            opened = loop.time()
            try:
                async with await self.outbox.collection.watch(
                    [{"$match": {"operationType": "insert"}}]
                ) as stream:
                    while stream.alive:
                        await self._waiting.wait()
                        found = await stream.try_next()
                        if lost:  # a stream that opens but cannot be read is not back yet
                            _log.info("outbox change stream restored")
                            lost = False
                            self.outbox.wakeup.set()  # other processes' inserts meanwhile
                        if found is not None:
                            self.outbox.wakeup.set()
                        else:
                            await asyncio.sleep(self.watch_pause)
                lost = self._stream_lost("the server ended the stream", lost)
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                if exc.code in _NO_CHANGE_STREAMS:
                    _log.info("outbox change streams unsupported, polling", reason=str(exc))
                    return
                lost = self._stream_lost(repr(exc), lost)
            except Exception as exc:  # the database is away: the poll covers it meanwhile
                lost = self._stream_lost(repr(exc), lost)
            if loop.time() - opened >= self.max_backoff:
                backoff = 0.1  # it had been working a while: this is a new outage
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    @staticmethod
    def _stream_lost(reason: str, lost: bool) -> bool:
        if not lost:
            _log.warning("outbox change stream lost, polling until it is back", reason=reason)
        return True
