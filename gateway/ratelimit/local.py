"""The in-process GCRA used while Redis is unreachable (`failure_mode: local`).

Same arithmetic and reply layout as the Lua script, so the stage decides the same way from either;
each instance only sees its own traffic, which is the accepted degradation (it still protects).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LocalLimiter"]

DAY_US = 86_400_000_000


class LocalLimiter:
    """GCRA arrival times and daily counters in dicts, bounded to `max_keys` entries each."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.tats: dict[bytes, float] = {}
        self.counts: dict[bytes, int] = {}

    def clear(self) -> None:
        self.tats.clear()
        self.counts.clear()

    def run(
        self,
        specs: Sequence[tuple[bytes, int, int]],
        keys: Sequence[bytes],
        now: int,
        consume: bool,
    ) -> list[int]:
        """`specs[i]` = (kind, a, b) as the script's ARGV; returns the script's reply."""
        day = now // DAY_US
        midnight = (day + 1) * DAY_US
        out = [0, now // 1000]
        allowed = True
        writes: list[tuple[bool, bytes, float]] = []
        for (kind, a, b), key in zip(specs, keys, strict=True):
            if kind == b"r":
                tat = max(self.tats.get(key, 0.0), now)
                tau = a * b
                if not consume:
                    remaining = min(b, math.floor((now + tau - tat) / a))
                    out += (
                        1 if remaining > 0 else 0,
                        remaining,
                        math.ceil((tat - now) / 1000),
                        0,
                        0,
                    )
                    continue
                new_tat = tat + a
                allow_at = new_tat - tau
                if now < allow_at:
                    allowed = False
                    out += (
                        0,
                        0,
                        math.ceil((tat - now) / 1000),
                        math.ceil((allow_at - now) / 1000),
                        0,
                    )
                else:
                    out += (
                        1,
                        math.floor((now - allow_at) / a),
                        math.ceil((new_tat - now) / 1000),
                        0,
                        0,
                    )
                    writes.append((True, key, new_tat))
            else:
                qkey = b"%s:%d" % (key, day)
                used = self.counts.get(qkey, 0)
                reset = math.ceil((midnight - now) / 1000)
                full = a > 0 and used >= a
                if consume and full:
                    allowed = False
                step = 1 if consume and not full else 0
                remaining = max(0, a - used - step) if a > 0 else -1
                out += (0 if full else 1, remaining, reset, reset if full else 0, used)
                if consume and not full:
                    writes.append((False, qkey, 0.0))
        if consume and allowed:
            for is_rate, key, value in writes:
                if is_rate:
                    self.tats[key] = value
                else:
                    self.counts[key] = self.counts.get(key, 0) + 1
            self._bound(now)
        out[0] = 1 if allowed else 0
        return out

    def _bound(self, now: int) -> None:
        if len(self.tats) > self.max_keys:
            # Arrival times in the past are equivalent to absent keys: drop those first.
            self.tats = {k: v for k, v in self.tats.items() if v > now}
            while len(self.tats) > self.max_keys:
                del self.tats[next(iter(self.tats))]
        if len(self.counts) > self.max_keys:
            while len(self.counts) > self.max_keys:
                del self.counts[next(iter(self.counts))]
