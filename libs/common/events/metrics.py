"""Prometheus metrics of the event bus (default registry, created once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "EVENTS_CONSUMED",
    "EVENTS_DLQ_MESSAGES",
    "EVENTS_PUBLISHED",
    "EVENT_CONSUME_LAG",
    "OUTBOX_PENDING",
]

EVENTS_PUBLISHED = Counter(
    "events_published_total", "Outbox entries published and confirmed by the broker", ["type"]
)
OUTBOX_PENDING = Gauge(
    "outbox_pending", "Outbox entries not yet confirmed by the broker", ["source"]
)
EVENTS_CONSUMED = Counter(
    "events_consumed_total",
    "Deliveries handled, by event type and result (ok, duplicate, retry, dead)",
    ["type", "result"],
)
EVENT_CONSUME_LAG = Histogram(
    "event_consume_lag_seconds",
    "Time from an event's occurred_at to the moment a consumer handles it",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
EVENTS_DLQ_MESSAGES = Gauge(
    "events_dlq_messages", "Messages parked in a consumer's dead-letter queue", ["queue"]
)
