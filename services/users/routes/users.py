"""User handlers: profiles, search, batch fetch, and user administration."""

from __future__ import annotations

from aiohttp import web

from libs.common.http import json_response, parse, parse_query
from libs.common.pagination import encode_cursor, page_response
from services.users.keys import ACCOUNTS
from services.users.routes.common import (
    admin_of,
    caller_of,
    cursor_after,
    request_info,
    routes,
    sees_email,
    user_tag,
)
from services.users.schemas import (
    AdminUsersQuery,
    AdminUserUpdate,
    UserAdminView,
    UserProfile,
    UserPublic,
    UsersBatch,
    UsersQuery,
    UserUpdate,
)


@routes.get("/api/v1/users/me")
async def get_me(request: web.Request) -> web.Response:
    user = await request.app[ACCOUNTS].get(caller_of(request).id)
    return json_response(UserPublic.from_model(user), headers=user_tag(str(user.id)))


@routes.patch("/api/v1/users/me")
async def update_me(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse(request, UserUpdate)
    user = await request.app[ACCOUNTS].update_profile(
        caller=caller, display_name=body.display_name, info=request_info(request)
    )
    return json_response(UserPublic.from_model(user), headers=user_tag(str(user.id)))


@routes.delete("/api/v1/users/me")
async def delete_me(request: web.Request) -> web.Response:
    caller = caller_of(request)
    await request.app[ACCOUNTS].delete(caller=caller, info=request_info(request))
    # The tag lets the gateway purge the cached profile before the `user.deleted` event arrives.
    return web.Response(status=204, headers=user_tag(caller.id))


@routes.get("/api/v1/users")
async def search_users(request: web.Request) -> web.Response:
    caller = caller_of(request)
    query = parse_query(request, UsersQuery)
    users, after = await request.app[ACCOUNTS].search(
        q=query.q, limit=query.limit, after=cursor_after(query.cursor)
    )
    items = [
        UserProfile.from_model(u, show_email=sees_email(caller, str(u.id))).render() for u in users
    ]
    return page_response(request, items, encode_cursor({"after": after}) if after else None)


@routes.post("/api/v1/users/batch")
async def batch_users(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await parse(request, UsersBatch)
    users = await request.app[ACCOUNTS].batch(body.ids)
    items = [
        UserProfile.from_model(u, show_email=sees_email(caller, str(u.id))).render() for u in users
    ]
    return json_response({"items": items})


@routes.get("/api/v1/users/{id}")
async def get_user(request: web.Request) -> web.Response:
    caller = caller_of(request)
    user = await request.app[ACCOUNTS].get(request.match_info["id"])
    show_email = sees_email(caller, str(user.id))
    profile = UserProfile.from_model(user, show_email=show_email).render()
    return json_response(profile, headers=user_tag(str(user.id)))


@routes.get("/api/v1/admin/users")
async def admin_list_users(request: web.Request) -> web.Response:
    admin_of(request)
    query = parse_query(request, AdminUsersQuery)
    users, after = await request.app[ACCOUNTS].admin_list(
        q=query.q,
        role=query.role,
        disabled=query.disabled,
        limit=query.limit,
        after=cursor_after(query.cursor),
    )
    items = [UserAdminView.from_model(u) for u in users]
    return page_response(request, items, encode_cursor({"after": after}) if after else None)


@routes.patch("/api/v1/admin/users/{id}")
async def admin_update_user(request: web.Request) -> web.Response:
    caller = admin_of(request)
    body = await parse(request, AdminUserUpdate)
    user = await request.app[ACCOUNTS].admin_update(
        caller=caller,
        user_id=request.match_info["id"],
        roles=list(body.roles) if body.roles is not None else None,
        disabled=body.disabled,
        info=request_info(request),
    )
    return json_response(UserAdminView.from_model(user), headers=user_tag(str(user.id)))
