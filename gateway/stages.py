"""What the gateway expects from the rate-limit and cache stages (`gateway/ratelimit/`,
`gateway/cache/`): structural types, so the core does not depend on their internals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web

from gateway.revocation import RevocationKeys
from libs.common.identity import Principal

__all__ = ["CacheStageLike", "RateDecisionLike", "RateLimitStageLike"]


class RateDecisionLike(Protocol):
    def headers(self) -> Mapping[str, str]: ...

    def header_items(self) -> list[tuple[str, str]]: ...


class RateLimitStageLike(Protocol):
    @property
    def folds_revocation(self) -> bool:
        """Whether `evaluate(revocation=...)` will judge a token in its own call (else it
        raises RevocationUnchecked, and the caller checks the token itself)."""

    async def evaluate(
        self, *, route_policy: str | None, client_ip: str, principal: Principal | None,
        revocation: RevocationKeys | None = None,
    ) -> RateDecisionLike | None: ...  # fmt: skip

    async def usage(self, *, principal: Principal | None, client_ip: str) -> dict[str, Any]: ...


class CacheStageLike(Protocol):
    async def handle(
        self,
        request: web.Request,
        *,
        policy: Any,
        principal: Principal | None,
        fetch: Callable[[], Awaitable[Any]],
        route: str | None = None,
        probe: Any = None,
    ) -> web.StreamResponse: ...

    def count_hit(self, label: str) -> None: ...

    async def probe(
        self, request: web.Request, policy: Any, principal: Principal | None, label: str
    ) -> tuple[Any, int] | Any: ...

    async def purge_after_write(self, response_headers: Any) -> None: ...

    async def purge_tags(self, tags: Iterable[str], *, reason: str = "tag") -> int: ...

    async def purge_key(self, key: str) -> bool: ...
