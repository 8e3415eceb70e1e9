"""Local filesystem backend: sharded directories, atomic writes, file I/O off the event loop."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

from services.files.storage.base import ObjectStorage, StoredObject

T = TypeVar("T")

_KEY = re.compile(r"[A-Za-z0-9_-]{4,128}")
_TMP_PREFIX = ".tmp-"
# Disk writes are batched so one executor hop moves ~1 MiB, not one network chunk.
WRITE_BATCH = 1024 * 1024
READ_CHUNK = 256 * 1024


class LocalStorage(ObjectStorage):
    """Objects at `<root>/ab/cd/<key>`; a put writes `.tmp-*` in the same directory, fsyncs it,
    then renames it over the final name, so readers see the whole object or nothing."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # abspath, not resolve(): no filesystem access while the app is being built.
        self.root = Path(os.path.abspath(root))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    def path_of(self, key: str) -> Path:
        # Keys are random ids made by the service; refuse anything else rather than trust it.
        if not _KEY.fullmatch(key):
            raise ValueError("invalid object key")
        return self.root / key[:2] / key[2:4] / key

    async def start(self) -> None:
        await self._run(partial(self.root.mkdir, parents=True, exist_ok=True))

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        final = self.path_of(key)
        tmp = final.with_name(f"{_TMP_PREFIX}{key}.{uuid.uuid4().hex[:8]}")
        await self._run(partial(final.parent.mkdir, parents=True, exist_ok=True))
        handle: BinaryIO = await self._run(open, tmp, "wb")
        written = 0
        # One batch is written by a worker thread while the next one is being received.
        writing: asyncio.Future[int] | None = None
        try:
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(self._run(handle.write, batch))
                    written += len(batch)
                    batch = bytearray()
            if writing is not None:
                await writing
            if batch:
                await self._run(handle.write, batch)
                written += len(batch)
            await self._run(_flush_and_sync, handle)
            await self._run(handle.close)
            await self._run(os.replace, tmp, final)
            await self._run(_fsync_dir, final.parent)
        except BaseException:
            if writing is not None:  # never close the file under a write in flight
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
            await asyncio.shield(self._run(_discard, handle, tmp))
            raise
        return written

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        handle: BinaryIO = await self._run(open, self.path_of(key), "rb")
        try:
            await self._run(handle.seek, start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                data = await self._run(handle.read, size)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            await asyncio.shield(self._run(handle.close))

    async def delete(self, key: str) -> None:
        await self._run(_unlink, self.path_of(key))

    async def exists(self, key: str) -> bool:
        return await self._run(self.path_of(key).is_file)

    async def list(self) -> AsyncIterator[StoredObject]:
        for item in await self._run(self._scan):
            yield item

    def _scan(self) -> builtins.list[StoredObject]:
        out: builtins.list[StoredObject] = []
        if not self.root.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                    if name.startswith(_TMP_PREFIX):
                        # A temp file is an upload in flight, or one a crash left behind.
                        out.append(StoredObject(f"{_TMP_PREFIX}{path}", stat.st_size, modified))
                    elif _KEY.fullmatch(name):
                        out.append(StoredObject(name, stat.st_size, modified))
        return out

    async def delete_listed(self, item: StoredObject) -> None:
        """Delete what `list` returned (a temp file is named by its path)."""
        if item.key.startswith(_TMP_PREFIX):
            path = Path(item.key[len(_TMP_PREFIX) :])
            if path.is_relative_to(self.root):
                await self._run(_unlink, path)
            return
        await self.delete(item.key)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _discard(handle: BinaryIO, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        handle.close()
    _unlink(tmp)
