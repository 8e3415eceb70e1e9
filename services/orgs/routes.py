"""HTTP handlers of the orgs service: parse -> call the service -> render. Nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from libs.common.errors import BadRequest, Forbidden
from libs.common.http import json_response, parse, parse_query, principal
from libs.common.identity import Principal
from libs.common.pagination import PageParams, decode_cursor, encode_cursor, page_response
from services.orgs.keys import ORGS
from services.orgs.models import Role
from services.orgs.openapi import openapi_document
from services.orgs.schemas import (
    InvitationCreate,
    InvitationCreated,
    InvitationPublic,
    MemberPublic,
    MembershipPublic,
    MemberUpdate,
    OrgCreate,
    OrgPublic,
    OrgUpdate,
    TeamCreate,
    TeamMemberPublic,
    TeamPublic,
    TeamUpdate,
)
from services.orgs.service import Page

routes = web.RouteTableDef()

ORG = "/api/v1/orgs/{org_id}"
TEAM = ORG + "/teams/{team_id}"


def _caller(request: web.Request) -> Principal:
    who = principal(request)
    if who.kind == "service":  # services act for nobody here; only users and their API keys
        raise Forbidden("this route is for users")
    return who


def _page(request: web.Request) -> tuple[int, str | None]:
    params = parse_query(request, PageParams)
    position = decode_cursor(params.cursor)
    after = position.get("after") if position else None
    if position is not None and not isinstance(after, str):
        raise BadRequest("invalid cursor")
    return params.limit, after


def _next(page: Page[Any]) -> str | None:
    return encode_cursor({"after": page.next_after}) if page.next_after else None


def _tags(*tags: str) -> dict[str, str]:
    """`Surrogate-Key` for the gateway cache; events carrying these ids purge the entries."""
    return {"Surrogate-Key": " ".join(tags)}


@routes.get("/openapi.json")
async def openapi(_: web.Request) -> web.Response:
    return json_response(openapi_document())


@routes.post("/api/v1/orgs")
async def create_org(request: web.Request) -> web.Response:
    body = await parse(request, OrgCreate)
    org = await request.app[ORGS].create_org(owner=_caller(request), name=body.name, slug=body.slug)
    return json_response(OrgPublic.from_model(org, role=Role.OWNER), status=201)


@routes.get("/api/v1/orgs")
async def list_orgs(request: web.Request) -> web.Response:
    caller = _caller(request)
    limit, after = _page(request)
    page = await request.app[ORGS].list_orgs(caller=caller, limit=limit, after=after)
    items = [OrgPublic.from_model(org, role=role) for org, role in page.items]
    tags = [f"user:{caller.id}", *(f"org:{item.id}" for item in items)]
    return page_response(request, items, _next(page), headers=_tags(*tags))


@routes.get(ORG)
async def get_org(request: web.Request) -> web.Response:
    org_id = request.match_info["org_id"]
    org, role = await request.app[ORGS].get_org(caller=_caller(request), org_id=org_id)
    return json_response(OrgPublic.from_model(org, role=role), headers=_tags(f"org:{org_id}"))


@routes.patch(ORG)
async def update_org(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await parse(request, OrgUpdate)
    org, role = await request.app[ORGS].update_org(
        caller=caller, org_id=request.match_info["org_id"], name=body.name, slug=body.slug
    )
    return json_response(OrgPublic.from_model(org, role=role))


@routes.delete(ORG)
async def delete_org(request: web.Request) -> web.Response:
    await request.app[ORGS].delete_org(caller=_caller(request), org_id=request.match_info["org_id"])
    return web.Response(status=204)


@routes.get(ORG + "/members")
async def list_members(request: web.Request) -> web.Response:
    caller = _caller(request)
    org_id = request.match_info["org_id"]
    limit, after = _page(request)
    page = await request.app[ORGS].list_members(
        caller=caller, org_id=org_id, limit=limit, after=after
    )
    items = [MemberPublic.from_model(m) for m in page.items]
    return page_response(request, items, _next(page), headers=_tags(f"org:{org_id}"))


@routes.patch(ORG + "/members/{user_id}")
async def change_role(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await parse(request, MemberUpdate)
    membership = await request.app[ORGS].change_role(
        caller=caller,
        org_id=request.match_info["org_id"],
        user_id=request.match_info["user_id"],
        role=body.role,
    )
    return json_response(MembershipPublic.from_model(membership))


@routes.delete(ORG + "/members/{user_id}")
async def remove_member(request: web.Request) -> web.Response:
    await request.app[ORGS].remove_member(
        caller=_caller(request),
        org_id=request.match_info["org_id"],
        user_id=request.match_info["user_id"],
    )
    return web.Response(status=204)


@routes.post(ORG + "/invitations")
async def create_invitation(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await parse(request, InvitationCreate)
    invitation, token = await request.app[ORGS].create_invitation(
        caller=caller, org_id=request.match_info["org_id"], email=body.email, role=body.role
    )
    created = InvitationCreated(
        id=str(invitation.id),
        org_id=str(invitation.org_id),
        email=invitation.email,
        role=invitation.role,
        token=token,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )
    return json_response(created, status=201, headers={"Cache-Control": "no-store"})


@routes.get(ORG + "/invitations")
async def list_invitations(request: web.Request) -> web.Response:
    caller = _caller(request)
    org_id = request.match_info["org_id"]
    limit, after = _page(request)
    page = await request.app[ORGS].list_invitations(
        caller=caller, org_id=org_id, limit=limit, after=after
    )
    now = datetime.now(UTC)
    items = [InvitationPublic.from_model(i, now=now) for i in page.items]
    return page_response(request, items, _next(page), headers=_tags(f"org:{org_id}"))


@routes.delete(ORG + "/invitations/{invitation_id}")
async def revoke_invitation(request: web.Request) -> web.Response:
    await request.app[ORGS].revoke_invitation(
        caller=_caller(request),
        org_id=request.match_info["org_id"],
        invitation_id=request.match_info["invitation_id"],
    )
    return web.Response(status=204)


@routes.post("/api/v1/invitations/{token}/accept")
async def accept_invitation(request: web.Request) -> web.Response:
    membership = await request.app[ORGS].accept_invitation(
        caller=_caller(request), token=request.match_info["token"]
    )
    return json_response(MembershipPublic.from_model(membership))


@routes.post(ORG + "/teams")
async def create_team(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await parse(request, TeamCreate)
    team = await request.app[ORGS].create_team(
        caller=caller, org_id=request.match_info["org_id"], name=body.name
    )
    return json_response(TeamPublic.from_model(team, member_count=0), status=201)


@routes.get(ORG + "/teams")
async def list_teams(request: web.Request) -> web.Response:
    caller = _caller(request)
    org_id = request.match_info["org_id"]
    limit, after = _page(request)
    page = await request.app[ORGS].list_teams(
        caller=caller, org_id=org_id, limit=limit, after=after
    )
    items = [TeamPublic.from_model(t, member_count=n) for t, n in page.items]
    tags = [f"org:{org_id}", *(f"team:{item.id}" for item in items)]
    return page_response(request, items, _next(page), headers=_tags(*tags))


@routes.get(TEAM)
async def get_team(request: web.Request) -> web.Response:
    org_id, team_id = request.match_info["org_id"], request.match_info["team_id"]
    team, count = await request.app[ORGS].get_team(
        caller=_caller(request), org_id=org_id, team_id=team_id
    )
    return json_response(
        TeamPublic.from_model(team, member_count=count),
        headers=_tags(f"org:{org_id}", f"team:{team_id}"),
    )


@routes.patch(TEAM)
async def update_team(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await parse(request, TeamUpdate)
    team, count = await request.app[ORGS].update_team(
        caller=caller,
        org_id=request.match_info["org_id"],
        team_id=request.match_info["team_id"],
        name=body.name,
    )
    return json_response(TeamPublic.from_model(team, member_count=count))


@routes.delete(TEAM)
async def delete_team(request: web.Request) -> web.Response:
    await request.app[ORGS].delete_team(
        caller=_caller(request),
        org_id=request.match_info["org_id"],
        team_id=request.match_info["team_id"],
    )
    return web.Response(status=204)


@routes.get(TEAM + "/members")
async def list_team_members(request: web.Request) -> web.Response:
    caller = _caller(request)
    org_id, team_id = request.match_info["org_id"], request.match_info["team_id"]
    limit, after = _page(request)
    page = await request.app[ORGS].list_team_members(
        caller=caller, org_id=org_id, team_id=team_id, limit=limit, after=after
    )
    items = [TeamMemberPublic.from_model(m) for m in page.items]
    tags = _tags(f"org:{org_id}", f"team:{team_id}")
    return page_response(request, items, _next(page), headers=tags)


@routes.put(TEAM + "/members/{user_id}")
async def add_team_member(request: web.Request) -> web.Response:
    await request.app[ORGS].add_team_member(
        caller=_caller(request),
        org_id=request.match_info["org_id"],
        team_id=request.match_info["team_id"],
        user_id=request.match_info["user_id"],
    )
    return web.Response(status=204)


@routes.delete(TEAM + "/members/{user_id}")
async def remove_team_member(request: web.Request) -> web.Response:
    await request.app[ORGS].remove_team_member(
        caller=_caller(request),
        org_id=request.match_info["org_id"],
        team_id=request.match_info["team_id"],
        user_id=request.match_info["user_id"],
    )
    return web.Response(status=204)
