"""Per-window and per-kind accounting of the soak's HTTP calls."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ERROR_SAMPLES = 25


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values` by nearest rank, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class Window:
    """What the client saw during one reporting window."""

    started: float
    requests: int = 0
    errors: int = 0
    limited: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self, ended: float) -> dict[str, Any]:
        seconds = max(ended - self.started, 1e-9)
        p50, p99 = percentile(self.latencies, 0.50), percentile(self.latencies, 0.99)
        return {
            "seconds": round(seconds, 2),
            "requests": self.requests,
            "rps": round(self.requests / seconds, 1),
            "errors": self.errors,
            "429": self.limited,
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }


@dataclass
class KindStats:
    requests: int = 0
    errors: int = 0
    limited: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


class Recorder:
    """Counts per window and per kind of call; keeps a few error samples."""

    def __init__(self) -> None:
        self.window = Window(time.monotonic())
        self.kinds: dict[str, KindStats] = {}
        self.samples: list[dict[str, Any]] = []
        self.stale_reads = 0  # GET /users/me right after our own PATCH showed the old name
        self.bad_bodies = 0  # a download whose bytes differ from the upload
        self.client_bugs = 0  # an operation raised (a bug of this generator, not the platform)

    def roll(self) -> tuple[Window, float]:
        """Close the current window and open the next one."""
        ended = time.monotonic()
        window, self.window = self.window, Window(ended)
        return window, ended

    def record(
        self, kind: str, status: int | None, latency: float, *, ok: bool, note: str = ""
    ) -> None:
        stats = self.kinds.setdefault(kind, KindStats())
        stats.requests += 1
        stats.statuses[str(status) if status is not None else note] += 1
        stats.latencies.append(latency)
        self.window.requests += 1
        self.window.latencies.append(latency)
        if status == 429:
            stats.limited += 1
            self.window.limited += 1
        elif not ok:
            stats.errors += 1
            self.window.errors += 1
            if len(self.samples) < ERROR_SAMPLES:
                self.samples.append({"kind": kind, "status": status, "detail": note[:300]})

    def error(self, kind: str, detail: str) -> None:
        """A check on a 2xx answer failed (wrong bytes, stale read): an error of that call."""
        self.kinds.setdefault(kind, KindStats()).errors += 1
        self.window.errors += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append({"kind": kind, "status": None, "detail": detail[:300]})
