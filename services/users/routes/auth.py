"""Authentication handlers: sign-up, tokens, sessions, passwords, and the JWKS/OpenAPI documents."""

from __future__ import annotations

from aiohttp import web

from libs.common.http import json_response, parse
from services.users.keys import AUTH, CREDENTIALS, KEYRING, OPENAPI, SESSIONS, SETTINGS
from services.users.routes.common import NO_STORE, caller_of, request_info, routes, token_response
from services.users.schemas import (
    LoginRequest,
    LogoutRequest,
    PasswordChange,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    SessionPublic,
    UserPublic,
)


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    document = await request.app[KEYRING].jwks()
    max_age = request.app[SETTINGS].jwks_max_age_seconds
    return json_response(document, headers={"Cache-Control": f"public, max-age={max_age}"})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


@routes.post("/api/v1/auth/register")
async def register(request: web.Request) -> web.Response:
    body = await parse(request, RegisterRequest)
    user = await request.app[AUTH].register(
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        info=request_info(request),
    )
    return json_response(
        UserPublic.from_model(user), status=201, headers={"Location": f"/api/v1/users/{user.id}"}
    )


@routes.post("/api/v1/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await parse(request, LoginRequest)
    pair = await request.app[AUTH].login(
        email=body.email, password=body.password, info=request_info(request)
    )
    return token_response(pair)


@routes.post("/api/v1/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await parse(request, RefreshRequest)
    return token_response(
        await request.app[AUTH].refresh(
            refresh_token=body.refresh_token, info=request_info(request)
        )
    )


@routes.post("/api/v1/auth/logout")
async def logout(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse(request, LogoutRequest)
    await request.app[AUTH].logout(
        caller=caller, refresh_token=body.refresh_token, info=request_info(request)
    )
    return web.Response(status=204)


@routes.post("/api/v1/auth/password")
async def change_password(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse(request, PasswordChange)
    await request.app[CREDENTIALS].change_password(
        caller=caller,
        current_password=body.current_password,
        new_password=body.new_password,
        info=request_info(request),
    )
    return web.Response(status=204)


@routes.get("/api/v1/auth/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    caller = caller_of(request)
    sessions = await request.app[SESSIONS].list(caller=caller)
    items = [SessionPublic.from_model(s, current_id=caller.session_id) for s in sessions]
    return json_response({"items": items, "next_cursor": None}, headers=NO_STORE)


@routes.delete("/api/v1/auth/sessions/{id}")
async def revoke_session(request: web.Request) -> web.Response:
    caller = caller_of(request)
    await request.app[SESSIONS].revoke(
        caller=caller, session_id=request.match_info["id"], info=request_info(request)
    )
    return web.Response(status=204)


@routes.post("/api/v1/auth/password-reset")
async def password_reset(request: web.Request) -> web.Response:
    body = await parse(request, PasswordResetRequest)
    request.app[CREDENTIALS].request_password_reset(email=body.email, info=request_info(request))
    return web.Response(status=202)


@routes.post("/api/v1/auth/password-reset/confirm")
async def password_reset_confirm(request: web.Request) -> web.Response:
    body = await parse(request, PasswordResetConfirm)
    await request.app[CREDENTIALS].confirm_password_reset(
        token=body.token, new_password=body.new_password, info=request_info(request)
    )
    return web.Response(status=204)
