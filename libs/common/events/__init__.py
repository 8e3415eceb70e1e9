"""The event bus: transactional outbox, relay with publisher confirms, idempotent consumers."""

from libs.common.events.envelope import EVENT_TYPES, Event
from libs.common.events.outbox import Outbox, OutboxEntry, Transaction

__all__ = ["EVENT_TYPES", "Event", "Outbox", "OutboxEntry", "Transaction"]
