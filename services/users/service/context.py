"""What the business rules need to know about the caller's request, without aiohttp."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Caller", "RequestInfo"]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Where a request came from (for sessions and the audit log)."""

    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified principal a request acts as (subset of `libs.common.identity.Principal`)."""

    id: str
    kind: str = "user"
    roles: tuple[str, ...] = ("user",)
    session_id: str | None = None
    token_id: str | None = None
    token_exp: int | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
