"""Which database errors mean "lost a race, run it again" (apart: the HTTP layer imports it)."""

from __future__ import annotations

import traceback

from pymongo.errors import ConnectionFailure, PyMongoError

__all__ = ["is_database_unreachable", "is_transient_conflict"]

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


def is_database_unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (down, restarting, failing over): a 503, not a 500.

    Besides `ConnectionFailure`, PyMongo's async server selection can fail with
    `RuntimeError("cannot wait on un-acquired lock")` when its wait times out while no server
    is selectable (the condition-variable bug of PYTHON-5167, seen on Python 3.11 while the
    database was killed): the same situation, so the same answer.
    """
    if isinstance(exc, ConnectionFailure):
        return True
    if not isinstance(exc, RuntimeError) or "un-acquired lock" not in str(exc):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return any("/pymongo/" in frame.filename for frame in frames[-4:])
