"""The gateway's access log: the same JSON line structlog would render, but batched.

structlog renders and writes (one write(2) + flush) per line; at gateway rates that is ~10% of
the CPU. Here lines are serialised with orjson and written once per ~20 ms batch.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson

__all__ = ["AccessLog"]

_FLUSH_DELAY = 0.02
_FLUSH_BYTES = 64 * 1024


class AccessLog:
    def __init__(self, *, service: str) -> None:
        self.service = service
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._prefix = ""

    def request(self, **fields: Any) -> None:
        fields["event"] = "request"
        fields["service"] = self.service
        fields["level"] = "info"
        fields["timestamp"] = self._timestamp()
        line = orjson.dumps(fields) + b"\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_FLUSH_DELAY, self.flush)

    def _timestamp(self) -> str:
        # ISO 8601 UTC like structlog's TimeStamper; the seconds part is formatted once a second.
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        stream = sys.stdout
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            buffer.write(data)
            buffer.flush()
        else:  # a captured text stream (tests)
            stream.write(data.decode())
            stream.flush()
