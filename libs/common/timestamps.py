"""One wire format for every timestamp a client reads: RFC 3339, UTC, milliseconds, `Z`.

Pydantic drops the fraction when it is zero (`...:59Z` next to `...:59.100000Z`), so timestamps
would not sort as strings and their width would vary. MongoDB keeps milliseconds, so that is
the precision there is to show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema

__all__ = ["Timestamp", "format_timestamp", "utcnow"]


def utcnow() -> datetime:
    """Now, at MongoDB's millisecond precision (so a value reads back exactly as written)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_timestamp(value: datetime) -> str:
    if value.tzinfo is None:  # stored values are UTC; a naive one came back from the driver
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
