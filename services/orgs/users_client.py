"""The one call orgs makes to the users service: a user's email, when the local view lacks it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from libs.common.errors import UpstreamTimeout, UpstreamUnavailable
from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity
from services.orgs.service import EmailFetcher

_log = structlog.get_logger("portico.orgs.users")

USERS_HTTP = web.AppKey("users_http", aiohttp.ClientSession)
SERVICE = Principal(id="orgs", kind="service", roles=("service",))


def users_http_ctx(timeout: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: one ClientSession for the users service."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        app[USERS_HTTP] = session
        yield
        await session.close()

    return ctx


def email_fetcher(app: web.Application, *, base_url: str, secret: str) -> EmailFetcher:
    """`GET {base_url}/api/v1/users/{id}` as the orgs service; None when the user is unknown."""

    async def fetch(user_id: str) -> str | None:
        url = f"{base_url.rstrip('/')}/api/v1/users/{user_id}"
        headers = {IDENTITY_HEADER: sign_identity(SERVICE, secret)}
        try:
            async with app[USERS_HTTP].get(url, headers=headers) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    _log.warning("users lookup failed", status=response.status)
                    raise UpstreamUnavailable("the users service is unavailable")
                body = await response.json()
        except TimeoutError:
            raise UpstreamTimeout("the users service did not answer in time") from None
        except (aiohttp.ClientError, ValueError):
            raise UpstreamUnavailable("the users service is unavailable") from None
        email = body.get("email") if isinstance(body, dict) else None
        return email if isinstance(email, str) and email else None

    return fetch
