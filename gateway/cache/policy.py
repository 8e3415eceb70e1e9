"""The per-route cache policy (a route's `cache:` mapping in routes.yaml) and Cache-Control."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CachePolicy", "parse_cache_control"]

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}


class CachePolicy(BaseModel):
    """How one route is cached. `private` (the default) keeps one entry per principal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl: float = Field(gt=0, le=86_400)
    scope: Literal["public", "private"] = "private"
    # "*" (the default) varies the key on every query parameter, so `?page=2` never collides.
    vary_query: list[str] | Literal["*"] = "*"
    vary_headers: list[str] = Field(default_factory=list)
    stale_while_revalidate: float = Field(default=0, ge=0, le=86_400)
    stale_if_error: float = Field(default=0, ge=0, le=86_400)
    max_entry_bytes: int = Field(default=1024 * 1024, gt=0, le=64 * 1024 * 1024)

    @field_validator("vary_headers")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return sorted({name.strip().lower() for name in value if name.strip()})

    @field_validator("max_entry_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _SIZE.match(value)
            if match is None:
                raise ValueError("a size such as 65536, 64KiB or 1MiB")
            return int(match.group(1)) * _UNITS[match.group(2)]
        return value

    @property
    def keep_seconds(self) -> float:
        """How long past its TTL an entry can still be served stale."""
        return max(self.stale_while_revalidate, self.stale_if_error)


def parse_cache_control(value: str) -> dict[str, str | None]:
    """`max-age=60, private` -> {"max-age": "60", "private": None} (RFC 9111 section 5.2)."""
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, arg = part.strip().partition("=")
        if name:
            directives[name.lower()] = arg.strip().strip('"') if sep else None
    return directives
