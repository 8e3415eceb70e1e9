"""Bus consumers of the users service.

The users service is the source of identity events and reacts to none today; the empty
`Consumers` keeps the service's shape (and its queue name) ready for the first one.
"""

from __future__ import annotations

from libs.common.events.wiring import Consumers

__all__ = ["consumers"]

consumers = Consumers("users")
