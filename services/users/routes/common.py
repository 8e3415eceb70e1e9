"""What every handler module of the users service shares: the route table and small helpers."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from libs.common.errors import Forbidden
from libs.common.http import json_response, principal, request_id_of
from libs.common.identity import Principal
from libs.common.pagination import decode_cursor
from services.users.schemas import TokenResponse
from services.users.service import Caller, RequestInfo, TokenPair

__all__ = [
    "NO_STORE",
    "admin_of",
    "caller_of",
    "client_ip",
    "cursor_after",
    "request_info",
    "routes",
    "sees_email",
    "token_response",
    "user_tag",
]

# One table: the modules register into it in import order (`/users/me` before `/users/{id}`).
routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store"}


def client_ip(request: web.Request) -> str | None:
    # The gateway sets X-Forwarded-For; services are only reachable through it (DESIGN).
    forwarded = request.headers.get("X-Forwarded-For", "")
    for candidate in (forwarded.split(",")[0].strip(), request.remote or ""):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def request_info(request: web.Request) -> RequestInfo:
    agent = request.headers.get("User-Agent")
    return RequestInfo(
        ip=client_ip(request),
        user_agent=agent[:512] if agent else None,
        request_id=request_id_of(request),
    )


def caller_of(request: web.Request) -> Caller:
    who: Principal = principal(request)
    return Caller(
        id=who.id,
        kind=who.kind,
        roles=who.roles,
        session_id=who.session_id,
        token_id=who.token_id,
        token_exp=who.token_exp,
    )


def admin_of(request: web.Request) -> Caller:
    caller = caller_of(request)
    if not caller.is_admin:
        raise Forbidden("administrators only")
    return caller


def token_response(pair: TokenPair) -> web.Response:
    body = TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )
    return json_response(body, headers=NO_STORE)


def cursor_after(cursor: str | None) -> str | None:
    position = decode_cursor(cursor)
    value = position.get("after") if position else None
    return value if isinstance(value, str) else None


def sees_email(caller: Caller, user_id: str) -> bool:
    # Other services (orgs matches invitations by email) and admins see emails; users their own.
    return caller.kind == "service" or caller.is_admin or caller.id == user_id


def user_tag(user_id: str) -> dict[str, str]:
    return {"Surrogate-Key": f"user:{user_id}"}
