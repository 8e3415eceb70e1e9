"""Tunables of the bus. Defaults suit production; tests shorten the delays.

`BusOptions.from_settings(settings)` reads optional settings fields of the same names prefixed with
`events_` / `outbox_` (e.g. `events_max_attempts`), so a service can expose any of them as
environment variables without this module depending on its Settings class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["BusOptions"]

_SETTINGS_NAMES = {
    "prefetch": "events_prefetch",
    "group_commit": "events_group_commit",
    "transactions": "events_transactions",
    "max_attempts": "events_max_attempts",
    "retry_base_delay": "events_retry_base_delay",
    "retry_max_delay": "events_retry_max_delay",
    "processed_ttl": "events_processed_ttl",
    "drain_timeout": "events_drain_timeout",
    "dlq_poll_interval": "events_dlq_poll_interval",
    "retention": "outbox_retention",
    "poll_interval": "outbox_poll_interval",
    "lease_seconds": "outbox_lease_seconds",
    "batch_size": "outbox_batch_size",
}


@dataclass(frozen=True)
class BusOptions:
    """How the relay publishes and how consumers retry; all durations in seconds."""

    # consumers
    prefetch: int = 32
    # Deliveries that wait for a handler transaction share the next one, up to this many events
    # (1: one transaction per event); at most `transactions` run at once (see events.grouping).
    group_commit: int = 16
    transactions: int = 4
    max_attempts: int = 5  # deliveries of one event before it is parked in `<queue>.dlq`
    retry_base_delay: float = 1.0  # wait before the 2nd attempt; doubles per attempt
    retry_max_delay: float = 300.0
    processed_ttl: float = 7 * 24 * 3600.0  # how long processed ids are remembered
    drain_timeout: float = 10.0  # shutdown waits this long for in-flight handlers
    dlq_poll_interval: float = 15.0  # refresh of the `events_dlq_messages` gauge
    # relay
    retention: float = 7 * 24 * 3600.0  # sent outbox entries are pruned after this
    poll_interval: float = 1.0  # fallback when neither the in-process signal nor a change stream
    lease_seconds: float = 10.0  # a dead relay's lease expires after this; a replica takes over
    batch_size: int = 200

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> BusOptions:
        """Defaults, then any `events_*`/`outbox_*` field the settings define, then `overrides`."""
        values: dict[str, Any] = {}
        for field, setting in _SETTINGS_NAMES.items():
            value = getattr(settings, setting, None)
            if value is not None:
                values[field] = value
        values.update(overrides)
        return dataclasses.replace(cls(), **values)
