"""The storage interface both backends implement."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified_at: datetime


class ObjectStorage(ABC):
    """Put a stream, get a (ranged) stream, delete, exists, and list for the sweeper.

    `put` consumes `chunks` as they come; whatever the iterator raises (size limit, quota,
    client gone) propagates after the partial object has been removed, so a failed put leaves
    nothing behind.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend (create the bucket or directory)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the stream under `key` atomically; returns the number of bytes written."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes `start..end` (inclusive; `end=None` to the end of the object)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self) -> AsyncIterator[StoredObject]:
        """Every stored object (for the sweeper)."""

    async def delete_listed(self, item: StoredObject) -> None:
        """Delete something `list` returned."""
        await self.delete(item.key)

    async def abort_stale_uploads(self, older_than: datetime) -> int:
        """Drop unfinished uploads a crash left behind (S3 multipart); returns how many."""
        return 0

    async def presign(
        self, key: str, *, expires_in: int, content_disposition: str, content_type: str
    ) -> str | None:
        """A direct download URL, where the backend can make one."""
        return None
