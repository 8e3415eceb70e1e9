"""Counting, hashing and limiting an upload stream as it passes through to storage."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from libs.common.errors import PayloadTooLarge, QuotaExceeded
from services.files.content import SNIFF_BYTES

__all__ = ["Meter", "read_head"]

HASH_BATCH = 1024 * 1024


class Meter:
    """Wraps the incoming chunks: counts, hashes, and stops the upload the moment a limit is
    crossed (the storage backend then removes what it had written).

    Hashing runs in a worker thread, ~1 MiB at a time, while the event loop goes on reading
    the next bytes (hashlib releases the GIL): SHA-256 on the loop capped uploads at the hash
    speed of one core. `sha256` is complete once the iteration has ended.
    """

    def __init__(
        self, head: bytes, rest: AsyncIterator[bytes], *, max_size: int, remaining_quota: int
    ) -> None:
        self.head = head
        self.rest = rest
        self.max_size = max_size
        self.remaining_quota = remaining_quota
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._unhashed = bytearray()
        self._hashing: asyncio.Future[None] | None = None

    def _count(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise PayloadTooLarge(f"files are limited to {self.max_size} bytes")
        if self.size > self.remaining_quota:
            raise QuotaExceeded("your storage quota is exhausted", status=413)
        self._unhashed += chunk
        return chunk

    async def _hash_in_background(self) -> None:
        """Hand the buffered bytes to a thread, after the previous batch (order matters)."""
        if self._hashing is not None:
            await self._hashing
        batch, self._unhashed = self._unhashed, bytearray()
        loop = asyncio.get_running_loop()
        self._hashing = loop.run_in_executor(None, self.sha256.update, batch)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            yield self._count(self.head)
        async for chunk in self.rest:
            if chunk:
                yield self._count(chunk)
                if len(self._unhashed) >= HASH_BATCH:
                    await self._hash_in_background()
        if self._hashing is not None:
            await self._hashing
        self.sha256.update(self._unhashed)
        self._unhashed = bytearray()


async def read_head(chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """At least SNIFF_BYTES from the stream (fewer only if it ends); True when it ended."""
    head = bytearray()
    while len(head) < SNIFF_BYTES:
        try:
            head += await anext(chunks)
        except StopAsyncIteration:
            return bytes(head), True
    return bytes(head), False
