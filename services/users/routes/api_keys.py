"""API key handlers: create/list/revoke, admin tier changes, and the gateway's internal resolve."""

from __future__ import annotations

from aiohttp import web

from libs.common.errors import Forbidden
from libs.common.http import json_response, parse, principal
from services.users.keys import API_KEYS
from services.users.routes.common import NO_STORE, admin_of, caller_of, request_info, routes
from services.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeyResolve,
    ApiKeyTierUpdate,
)


@routes.patch("/api/v1/admin/api-keys/{id}")
async def admin_set_tier(request: web.Request) -> web.Response:
    caller = admin_of(request)
    body = await parse(request, ApiKeyTierUpdate)
    key = await request.app[API_KEYS].set_tier(
        caller=caller, key_id=request.match_info["id"], tier=body.tier, info=request_info(request)
    )
    return json_response(ApiKeyPublic.from_model(key))


@routes.post("/api/v1/api-keys")
async def create_api_key(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse(request, ApiKeyCreate)
    key, plaintext = await request.app[API_KEYS].create(
        caller=caller, name=body.name, scopes=body.scopes, info=request_info(request)
    )
    created = ApiKeyCreated(**ApiKeyPublic.from_model(key).model_dump(), key=plaintext)
    return json_response(created, status=201, headers=NO_STORE)


@routes.get("/api/v1/api-keys")
async def list_api_keys(request: web.Request) -> web.Response:
    keys = await request.app[API_KEYS].list(caller=caller_of(request))
    return json_response({"items": [ApiKeyPublic.from_model(k) for k in keys], "next_cursor": None})


@routes.delete("/api/v1/api-keys/{id}")
async def revoke_api_key(request: web.Request) -> web.Response:
    await request.app[API_KEYS].revoke(
        caller=caller_of(request), key_id=request.match_info["id"], info=request_info(request)
    )
    return web.Response(status=204)


# -- internal (never routed publicly by the gateway) ---------------------------------------


@routes.post("/internal/v1/api-keys/resolve")
async def resolve_api_key(request: web.Request) -> web.Response:
    if principal(request).kind != "service":
        raise Forbidden("internal endpoint")
    body = await parse(request, ApiKeyResolve)
    resolved = await request.app[API_KEYS].resolve(body.key)
    return json_response(
        {
            "key_id": resolved.key_id,
            "user_id": resolved.user_id,
            "scopes": resolved.scopes,
            "tier": resolved.tier,
            "roles": resolved.roles,
        },
        headers=NO_STORE,
    )
