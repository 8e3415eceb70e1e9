"""The transaction an event handler runs in, so its effect and "processed" commit together.

The consumer runtime records an event as processed inside a MongoDB transaction and runs the
handlers inside the same one. A handler's writes made with `handler_session()` (or through
`Outbox.transaction()`, which joins it) therefore commit atomically with that record: a
redelivery after a crash or a cut connection finds the record and skips the handler, and a
handler that failed half-way leaves nothing behind. Writes made outside the session (object
storage, other databases) must be idempotent on their own, and so must anything else a handler
does before the commit: an aborted attempt runs again (after a write conflict, or when another
event of the same group commit failed, see `events.grouping`). Work that must happen once goes in
`after_commit`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from pymongo.asynchronous.client_session import AsyncClientSession

__all__ = [
    "AfterCommit",
    "HandlerTransaction",
    "after_commit",
    "current_handler_transaction",
    "handler_session",
    "run_after_commit",
]


AfterCommit = Callable[[], Awaitable[None] | None]


@dataclass
class HandlerTransaction:
    """The session of the event being handled, and what to do once it committed."""

    session: AsyncClientSession
    after_commit: list[AfterCommit] = field(default_factory=list)


_CURRENT: ContextVar[HandlerTransaction | None] = ContextVar("portico_handler_tx", default=None)


def current_handler_transaction() -> HandlerTransaction | None:
    return _CURRENT.get()


def handler_session() -> AsyncClientSession | None:
    """The session to pass as `session=` for writes that must commit with the event's record."""
    tx = _CURRENT.get()
    return None if tx is None else tx.session


def set_handler_transaction(tx: HandlerTransaction | None) -> object:
    return _CURRENT.set(tx)


def reset_handler_transaction(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]


async def after_commit(step: AfterCommit) -> None:
    """Run `step` once the current writes are durable: now outside an event handler, after the
    handler's transaction committed inside one (e.g. deleting a blob whose record the handler
    deleted: before the commit, an abort would leave a record without its blob)."""
    tx = _CURRENT.get()
    if tx is None:
        await run_after_commit([step])
    else:
        tx.after_commit.append(step)


async def run_after_commit(steps: list[AfterCommit]) -> None:
    for step in steps:
        result = step()
        if inspect.isawaitable(result):
            await result
