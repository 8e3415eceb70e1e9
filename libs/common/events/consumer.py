"""The consumer runtime: one queue per service, idempotent handling, broker-side retries, a DLQ.

A delivery is acked only after its handlers succeeded and its id was recorded in the service's
`processed_events` collection (TTL-indexed) in the same MongoDB transaction as the handlers'
writes (`libs.common.events.handling`); deliveries that arrive while the handler transactions are
busy share the next one (`libs.common.events.grouping`). A redelivered or duplicate event is acked
without running the handlers again. A failing delivery is re-published to `<queue>.retry.<n>`,
where it waits out its backoff (message TTL) before being dead-lettered back to `<queue>`; after
`max_attempts` it is parked in `<queue>.dlq` with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import AMQPError
from pydantic import ValidationError
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure

from libs.common.events.envelope import Event
from libs.common.events.grouping import GroupCommit, processed_record
from libs.common.events.handling import (
    AfterCommit,
    HandlerTransaction,
    reset_handler_transaction,
    run_after_commit,
    set_handler_transaction,
)
from libs.common.events.metrics import EVENT_CONSUME_LAG, EVENTS_CONSUMED, EVENTS_DLQ_MESSAGES
from libs.common.events.options import BusOptions
from libs.common.events.topology import declare_exchange, retry_delays

__all__ = [
    "ATTEMPT_HEADER",
    "ERROR_HEADER",
    "FAILED_AT_HEADER",
    "ConsumerRuntime",
    "EventHandler",
    "persistent_copy",
    "topic_matches",
]

EventHandler = Callable[[Event], Awaitable[None]]
ATTEMPT_HEADER = "x-portico-attempts"  # failed attempts so far
ERROR_HEADER = "x-portico-error"  # why the last attempt failed
FAILED_AT_HEADER = "x-portico-failed-at"
_REASON_LIMIT = 500

_log = structlog.get_logger("portico.events.consumer")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more."""

    def match(p: Sequence[str], k: Sequence[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class _AlreadyProcessed(Exception):
    """The event's processed record exists: an earlier delivery committed its effect."""


def persistent_copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """`message` to publish again (a retry, the DLQ, a replay), durable, with these headers."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        app_id=message.app_id,
        correlation_id=message.correlation_id,
    )


class ConsumerRuntime:
    """Consumes one queue for a `Consumers` registry (start with `start()`, stop with `stop()`)."""

    def __init__(
        self,
        *,
        queue: str,
        bindings: Sequence[tuple[tuple[str, ...], EventHandler]],
        connection: AbstractRobustConnection,
        exchange: str,
        options: BusOptions,
        processed: AsyncCollection[Any] | None,
        broadcast: bool = False,
    ) -> None:
        self.bindings = list(bindings)
        self.connection = connection
        self.exchange_name = exchange
        self.options = options
        self.processed = processed
        self.broadcast = broadcast
        self.name = queue
        # Queues are namespaced by the exchange they serve, so two environments (or two tests)
        # sharing a broker never share a queue.
        base = f"{exchange}.{queue}"
        self.queue_name = f"{base}.{uuid.uuid4().hex[:8]}" if broadcast else base
        self.dlq_name = f"{base}.dlq"
        self.delays = retry_delays(
            max_attempts=options.max_attempts,
            base_delay=options.retry_base_delay,
            max_delay=options.retry_max_delay,
        )
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._active: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[str, list[EventHandler]] = {}
        self._groups: GroupCommit | None = None
        if processed is not None and options.group_commit > 1:
            self._groups = GroupCommit(
                processed,
                self._call_handlers,
                max_events=options.group_commit,
                transactions=options.transactions,
            )

    @property
    def routing_keys(self) -> list[str]:
        keys: list[str] = []
        for patterns, _ in self.bindings:
            keys.extend(p for p in patterns if p not in keys)
        return keys

    def retry_queue_name(self, attempt: int) -> str:
        return f"{self.queue_name}.retry.{attempt}"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the topology, then start consuming."""
        if self.processed is not None:
            await self._ensure_processed_index(self.processed)
        queue_type = "classic" if self.broadcast else await self._probe_queue_type()
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self.options.prefetch)
        exchange = await declare_exchange(channel, self.exchange_name)
        if self.broadcast:
            queue = await channel.declare_queue(
                self.queue_name, durable=False, exclusive=True, auto_delete=True
            )
        else:
            typed = {"x-queue-type": queue_type}
            queue = await channel.declare_queue(self.queue_name, durable=True, arguments=typed)
            await channel.declare_queue(self.dlq_name, durable=True, arguments=typed)
            for attempt, delay in enumerate(self.delays, start=1):
                await channel.declare_queue(
                    self.retry_queue_name(attempt),
                    durable=True,
                    arguments={
                        **typed,
                        "x-message-ttl": max(int(delay * 1000), 1),
                        # Back to the main queue only (not through the topic exchange).
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": self.queue_name,
                    },
                )
        for key in self.routing_keys:
            await queue.bind(exchange, routing_key=key)
        self._channel, self._queue = channel, queue
        self._consumer_tag = await queue.consume(self._on_message)
        if not self.broadcast:
            self._tasks.append(asyncio.create_task(self._watch_dlq(), name="events-dlq-gauge"))
        _log.info("consuming", queue=self.queue_name, routing_keys=self.routing_keys)

    async def stop(self) -> None:
        """Stop taking deliveries, let in-flight handlers finish, close the channel."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a channel close that ignores the cancellation must not hang
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag, timeout=5)
            self._consumer_tag = None
        try:
            await asyncio.wait_for(self._idle.wait(), self.options.drain_timeout)
        except TimeoutError:
            _log.warning("handlers still running at shutdown", inflight=self._inflight)
        if self._groups is not None:
            await self._groups.close(grace=self.options.drain_timeout)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), 5)
            self._channel = None

    async def delete_topology(self) -> None:
        """Delete this consumer's queues (tests and decommissioning; never on a normal stop)."""
        channel = await self.connection.channel()
        try:
            names = [self.queue_name, self.dlq_name] + [
                self.retry_queue_name(n) for n in range(1, len(self.delays) + 1)
            ]
            for name in names:
                await channel.queue_delete(name)
        finally:
            await channel.close()

    async def _probe_queue_type(self) -> str:
        """`quorum` where the broker accepts it for our queue, else `classic`."""
        channel = await self.connection.channel()
        try:
            await channel.declare_queue(
                self.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
            )
        except AMQPError as exc:
            _log.warning(
                "quorum queues refused; using classic", queue=self.queue_name, why=str(exc)
            )
            return "classic"
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return "quorum"

    async def _ensure_processed_index(self, processed: AsyncCollection[Any]) -> None:
        ttl = IndexModel(
            [("processed_at", ASCENDING)],
            name="processed_ttl",
            expireAfterSeconds=int(self.options.processed_ttl),
        )
        try:
            await processed.create_indexes([ttl])
        except OperationFailure as exc:  # same name, other TTL: keep the existing one
            _log.warning("processed_events TTL index not updated", reason=str(exc))

    async def _watch_dlq(self) -> None:
        while True:
            try:
                channel = await self.connection.channel()
                try:
                    dlq = await channel.declare_queue(self.dlq_name, passive=True)
                    count = dlq.declaration_result.message_count or 0
                    EVENTS_DLQ_MESSAGES.labels(queue=self.name).set(count)
                finally:
                    await channel.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: the gauge keeps its last value
                _log.debug("dlq depth unavailable", reason=repr(exc))
            await asyncio.sleep(self.options.dlq_poll_interval)

    # -- deliveries ------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inflight += 1
        self._idle.clear()
        try:
            await self._handle(message)
        except Exception:  # the channel is gone mid-ack: the broker redelivers, ids dedupe
            _log.exception("delivery not settled", queue=self.queue_name)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def handlers_for(self, event_type: str) -> list[EventHandler]:
        handlers = self._handlers.get(event_type)
        if handlers is None:  # matched once per type: the bindings are fixed
            handlers = self._handlers[event_type] = [
                handler
                for patterns, handler in self.bindings
                if any(topic_matches(p, event_type) for p in patterns)
            ]
        return handlers

    async def _call_handlers(self, event: Event) -> None:
        for handler in self.handlers_for(event.type):
            await handler(event)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValidationError as exc:
            await self._park(message, "unknown", f"malformed event: {exc.error_count()} errors")
            return
        occurred_at = event.occurred_at
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        lag = (datetime.now(UTC) - occurred_at).total_seconds()
        EVENT_CONSUME_LAG.labels(queue=self.name).observe(max(lag, 0.0))
        with structlog.contextvars.bound_contextvars(
            request_id=event.request_id, event_id=event.id, event_type=event.type
        ):
            await self._handle_once(message, event)

    async def _handle_once(self, message: AbstractIncomingMessage, event: Event) -> None:
        # Two copies of one event in flight at once (prefetch > 1) run one after the other, so the
        # second sees the first's processed record.
        key = f"{self.name}:{event.id}"
        while (running := self._active.get(key)) is not None:
            await asyncio.shield(running)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._active[key] = done
        try:
            await self._run_handlers(message, event, key)
        finally:
            del self._active[key]
            done.set_result(None)

    async def _run_handlers(self, message: AbstractIncomingMessage, event: Event, key: str) -> None:
        try:
            if self.processed is None:
                await self._call_handlers(event)
            else:
                steps = None
                # A redelivery is most likely a duplicate, which would abort a whole group.
                if self._groups is not None and not message.redelivered:
                    steps = await self._groups.submit(event, key)
                if steps is None:
                    steps = await self._run_in_transaction(self.processed, event, key)
                await run_after_commit(steps)
        except _AlreadyProcessed:
            await message.ack()
            EVENTS_CONSUMED.labels(type=event.type, result="duplicate").inc()
            _log.debug("duplicate event skipped")
            return
        except Exception as exc:
            await self._failed(message, event, exc)
            return
        await message.ack()
        EVENTS_CONSUMED.labels(type=event.type, result="ok").inc()

    async def _run_in_transaction(
        self, processed: AsyncCollection[Any], event: Event, key: str
    ) -> list[AfterCommit]:
        """Claim the event and run its handlers in one transaction (see `events.handling`);
        returns the steps to run now that it committed.

        The claim comes first, so a second copy of the event racing this one hits a write
        conflict (retried by `with_transaction`) and then the committed record.
        """
        after_commit: list[AfterCommit] = []

        async def attempt(session: AsyncClientSession) -> None:
            after_commit.clear()
            try:
                await processed.insert_one(processed_record(event, key), session=session)
            except DuplicateKeyError:
                raise _AlreadyProcessed from None
            tx = HandlerTransaction(session, after_commit)
            token = set_handler_transaction(tx)
            try:
                await self._call_handlers(event)
            finally:
                reset_handler_transaction(token)

        async with processed.database.client.start_session() as session:
            await session.with_transaction(attempt)
        return after_commit

    async def _failed(self, message: AbstractIncomingMessage, event: Event, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_LIMIT]
        if self.broadcast:
            # No retry queues for a broadcast queue: one redelivery, then drop (purges are
            # idempotent and the next write purges again).
            if message.redelivered:
                await message.reject(requeue=False)
                EVENTS_CONSUMED.labels(type=event.type, result="dead").inc()
            else:
                await message.nack(requeue=True)
                EVENTS_CONSUMED.labels(type=event.type, result="retry").inc()
            _log.warning("event handler failed", reason=reason)
            return
        headers = message.headers or {}
        raw = headers.get(ATTEMPT_HEADER, 0)
        attempts = (int(raw) if isinstance(raw, int | str) else 0) + 1
        if attempts >= self.options.max_attempts:
            await self._park(message, event.type, reason, attempts=attempts)
            return
        await self._republish(message, self.retry_queue_name(attempts), attempts, reason)
        await message.ack()
        EVENTS_CONSUMED.labels(type=event.type, result="retry").inc()
        _log.warning(
            "event handler failed, will retry",
            attempts=attempts,
            retry_in=self.delays[attempts - 1],
            reason=reason,
        )

    async def _park(
        self, message: AbstractIncomingMessage, event_type: str, reason: str, *, attempts: int = 1
    ) -> None:
        await self._republish(message, self.dlq_name, attempts, reason)
        await message.ack()
        EVENTS_CONSUMED.labels(type=event_type, result="dead").inc()
        EVENTS_DLQ_MESSAGES.labels(queue=self.name).inc()
        _log.error("event parked in the dead-letter queue", attempts=attempts, reason=reason)

    async def _republish(
        self, message: AbstractIncomingMessage, queue: str, attempts: int, reason: str
    ) -> None:
        channel = self._channel
        if channel is None:
            raise RuntimeError("consumer not started")
        headers: dict[str, Any] = dict(message.headers or {})
        headers.pop("x-death", None)  # the broker's own history; our headers say it shorter
        headers[ATTEMPT_HEADER] = attempts
        headers[ERROR_HEADER] = reason
        headers[FAILED_AT_HEADER] = datetime.now(UTC).isoformat()
        headers["x-portico-routing-key"] = str(
            headers.get("x-portico-routing-key") or message.routing_key or ""
        )
        # Published with confirms before the original is acked: a crash in between duplicates the
        # message (absorbed by the processed ids), never loses it.
        await channel.default_exchange.publish(
            persistent_copy(message, headers), routing_key=queue, timeout=10
        )
