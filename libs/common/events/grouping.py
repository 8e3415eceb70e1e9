"""Group commit: the handlers of several deliveries in one MongoDB transaction.

A transaction costs the database two round trips (its first write and the commit) whatever it
holds, and on SecantusDB that fixed part is most of a consumed event's cost. When deliveries
arrive faster than transactions finish, the ones waiting are therefore handled together: their
processed records are inserted first (the claims), then each event's handlers run, then one
commit makes all of it durable at once.

Exactly once still holds per event, because nothing of a group is durable until the group
commits:

- a handler that fails aborts the group; its event takes the usual failure path (retry queue,
  DLQ) and every other event of the group is handled again on its own, in a transaction of its
  own, its earlier attempt having left nothing behind (the same re-run a `with_transaction` retry
  does after a write conflict, so a handler's writes outside the session must already be
  idempotent, see `events.handling`);
- a claim that fails (an earlier delivery of one of the events committed meanwhile) or any other
  error aborts the group, and each event is handled on its own, which sorts out the duplicate.

At low rates a delivery finds no transaction busy and starts its own at once, so grouping adds
no latency; `BusOptions.group_commit = 1` turns it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from libs.common.events.envelope import Event
from libs.common.events.handling import (
    AfterCommit,
    HandlerTransaction,
    reset_handler_transaction,
    set_handler_transaction,
)

__all__ = ["GroupCommit", "processed_record"]

_log = structlog.get_logger("portico.events.consumer")


def processed_record(event: Event, key: str) -> dict[str, Any]:
    """The `processed_events` document that claims `event` for one consumer queue."""
    return {
        "_id": key,
        "event_id": event.id,
        "type": event.type,
        "processed_at": datetime.now(UTC),
    }


class _HandlerFailed(Exception):
    """The handler of the group's `index`-th event raised `error`."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


@dataclass
class _Waiting:
    event: Event
    key: str
    # The event's after-commit steps once its group committed; None: handle it on its own.
    outcome: asyncio.Future[list[AfterCommit] | None]
    after_commit: list[AfterCommit] = field(default_factory=list)

    def settle(self, result: list[AfterCommit] | Exception | None) -> None:
        if self.outcome.done():  # its delivery gave up waiting (cancelled)
            return
        if isinstance(result, Exception):
            self.outcome.set_exception(result)
        else:
            self.outcome.set_result(result)


class GroupCommit:
    """Hands out deliveries to at most `transactions` concurrent group transactions."""

    def __init__(
        self,
        processed: AsyncCollection[Any],
        handle: Callable[[Event], Awaitable[None]],
        *,
        max_events: int,
        transactions: int,
    ) -> None:
        self.processed = processed
        self.handle = handle
        self.max_events = max_events
        self.transactions = transactions
        self._waiting: list[_Waiting] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, event: Event, key: str) -> list[AfterCommit] | None:
        """Handle `event` in a group: its after-commit steps once committed, None when it must be
        handled on its own; raises what its handler raised."""
        waiting = _Waiting(event, key, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if len(self._running) < self.transactions:
            task = asyncio.create_task(self._commit_waiting(), name="events-group-commit")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await waiting.outcome

    async def _commit_waiting(self) -> None:
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group = self._waiting[: self.max_events]
                del self._waiting[: self.max_events]
                await self._commit(group)
                group = []
        finally:
            # Out of `_running` before anything else runs (no await since the queue was seen
            # empty): a delivery submitted from now on starts a transaction of its own rather
            # than waiting for this one, which is done.
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            for waiting in group:  # cancelled mid-group: nothing committed, each on its own
                waiting.settle(None)

    async def _commit(self, group: list[_Waiting]) -> None:
        try:
            async with self.processed.database.client.start_session() as session:
                await session.with_transaction(lambda s: self._attempt(s, group))
        except _HandlerFailed as failed:
            _log.info("handler failed in a group; the others are handled on their own")
            for index, waiting in enumerate(group):
                waiting.settle(failed.error if index == failed.index else None)
            return
        except Exception as exc:  # a duplicate claim, the database: each on its own
            _log.info("group transaction failed; handling its events one by one", error=repr(exc))
            for waiting in group:
                waiting.settle(None)
            return
        for waiting in group:
            waiting.settle(waiting.after_commit)

    async def _attempt(self, session: AsyncClientSession, group: list[_Waiting]) -> None:
        for waiting in group:
            waiting.after_commit.clear()
        # Claims first, as in the one-event transaction: a copy of one of these events being
        # handled elsewhere meets a write conflict, then the committed record.
        await self.processed.insert_many(
            [processed_record(w.event, w.key) for w in group], ordered=True, session=session
        )
        for index, waiting in enumerate(group):
            event = waiting.event
            token = set_handler_transaction(HandlerTransaction(session, waiting.after_commit))
            try:
                with structlog.contextvars.bound_contextvars(
                    request_id=event.request_id, event_id=event.id, event_type=event.type
                ):
                    await self.handle(event)
            except PyMongoError as exc:
                if exc.has_error_label("TransientTransactionError"):
                    raise  # a write conflict: `with_transaction` runs the whole group again
                raise _HandlerFailed(index, exc) from exc
            except Exception as exc:
                raise _HandlerFailed(index, exc) from exc
            finally:
                reset_handler_transaction(token)

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for the group transactions under way, then cancel the rest: an
        aborted group commits nothing and its unacked deliveries come back (`with_transaction`
        may otherwise keep re-running a conflicting group for two minutes)."""
        if not self._running:
            return
        _, stuck = await asyncio.wait(set(self._running), timeout=grace)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=grace)
