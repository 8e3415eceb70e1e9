"""Cache tags: from an upstream's `Surrogate-Key` header and from bus events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from libs.common.events import Event

__all__ = ["surrogate_keys", "tags_for_event"]


def tags_for_event(event: Event) -> list[str]:
    """The cache tags an event names: each `<kind>_id` in its data -> `<kind>:<value>`."""
    tags: list[str] = []
    for name, value in event.data.items():
        if not name.endswith("_id") or len(name) <= 3 or isinstance(value, bool):
            continue
        if not isinstance(value, str | int) or value == "":
            continue
        kind = name[:-3]
        if kind == "owner":
            kind = "user"
        tags.append(f"{kind}:{value}")
    return sorted(set(tags))


def surrogate_keys(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """The tags in the `Surrogate-Key` header(s), e.g. `user:42 org:7`."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    tags: list[str] = []
    for name, value in items:
        if name.lower() == "surrogate-key":
            tags.extend(value.split())
    return list(dict.fromkeys(tags))
