"""Which database errors mean "lost a race, run it again" (apart: the HTTP layer imports it)."""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, PyMongoError

__all__ = ["is_transient_conflict"]

_WRITE_CONFLICT = 112


def is_transient_conflict(exc: BaseException) -> bool:
    """A transaction lost a race (write conflict) and may simply be run again.

    An unreachable server carries the `TransientTransactionError` label too, but re-running
    only multiplies the wait (server selection timeout x attempts): that is not a conflict.
    """
    if not isinstance(exc, PyMongoError) or isinstance(exc, ConnectionFailure):
        return False
    if getattr(exc, "code", None) == _WRITE_CONFLICT:
        return True
    labels = ("TransientTransactionError", "UnknownTransactionCommitResult")
    return any(exc.has_error_label(label) for label in labels)
