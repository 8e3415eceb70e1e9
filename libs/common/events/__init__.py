"""The event bus: transactional outbox, relay with publisher confirms, idempotent consumers."""

from libs.common.events.consumer import ConsumerRuntime
from libs.common.events.envelope import EVENT_TYPES, Event
from libs.common.events.handling import handler_session
from libs.common.events.options import BusOptions
from libs.common.events.outbox import Outbox, OutboxEntry, Transaction
from libs.common.events.relay import OutboxRelay

__all__ = [
    "EVENT_TYPES",
    "BusOptions",
    "ConsumerRuntime",
    "Event",
    "Outbox",
    "OutboxEntry",
    "OutboxRelay",
    "Transaction",
    "handler_session",
]
