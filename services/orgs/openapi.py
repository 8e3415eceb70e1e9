"""The OpenAPI 3.1 document of the orgs service, generated from its pydantic schemas.

Paths are the public contract's (`/api/v1/orgs...`), as the gateway routes them unchanged.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.orgs import schemas as s

_REF = "#/components/schemas/{model}"
_PROBLEM = {"$ref": "#/components/schemas/Problem"}

# (method, path, summary, request model, success status, response model or None)
_OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, int, type[BaseModel] | None]] = [
    ("post", "/api/v1/orgs", "Create an org (caller is owner)", s.OrgCreate, 201, s.OrgPublic),
    ("get", "/api/v1/orgs", "Orgs the caller belongs to", None, 200, s.OrgsPage),
    ("get", "/api/v1/orgs/{org_id}", "Read an org (member)", None, 200, s.OrgPublic),
    ("patch", "/api/v1/orgs/{org_id}", "Update an org (admin)", s.OrgUpdate, 200, s.OrgPublic),
    ("delete", "/api/v1/orgs/{org_id}", "Delete an org (owner)", None, 204, None),
    ("get", "/api/v1/orgs/{org_id}/members", "List members (member)", None, 200, s.MembersPage),
    (
        "patch",
        "/api/v1/orgs/{org_id}/members/{user_id}",
        "Change a member's role (admin; owner to make or unmake owners)",
        s.MemberUpdate,
        200,
        s.MembershipPublic,
    ),
    (
        "delete",
        "/api/v1/orgs/{org_id}/members/{user_id}",
        "Remove a member (admin) or leave (self)",
        None,
        204,
        None,
    ),
    (
        "post",
        "/api/v1/orgs/{org_id}/invitations",
        "Invite an email (admin; owner to invite owners)",
        s.InvitationCreate,
        201,
        s.InvitationCreated,
    ),
    (
        "get",
        "/api/v1/orgs/{org_id}/invitations",
        "Pending invitations (admin)",
        None,
        200,
        s.InvitationsPage,
    ),
    (
        "delete",
        "/api/v1/orgs/{org_id}/invitations/{invitation_id}",
        "Revoke an invitation (admin)",
        None,
        204,
        None,
    ),
    (
        "post",
        "/api/v1/invitations/{token}/accept",
        "Accept an invitation (the invited user)",
        None,
        200,
        s.MembershipPublic,
    ),
    (
        "post",
        "/api/v1/orgs/{org_id}/teams",
        "Create a team (admin)",
        s.TeamCreate,
        201,
        s.TeamPublic,
    ),
    ("get", "/api/v1/orgs/{org_id}/teams", "List teams (member)", None, 200, s.TeamsPage),
    (
        "get",
        "/api/v1/orgs/{org_id}/teams/{team_id}",
        "Read a team (member)",
        None,
        200,
        s.TeamPublic,
    ),
    (
        "patch",
        "/api/v1/orgs/{org_id}/teams/{team_id}",
        "Rename a team (admin)",
        s.TeamUpdate,
        200,
        s.TeamPublic,
    ),
    ("delete", "/api/v1/orgs/{org_id}/teams/{team_id}", "Delete a team (admin)", None, 204, None),
    (
        "get",
        "/api/v1/orgs/{org_id}/teams/{team_id}/members",
        "List a team's members (member)",
        None,
        200,
        s.TeamMembersPage,
    ),
    (
        "put",
        "/api/v1/orgs/{org_id}/teams/{team_id}/members/{user_id}",
        "Add an org member to a team (admin)",
        None,
        204,
        None,
    ),
    (
        "delete",
        "/api/v1/orgs/{org_id}/teams/{team_id}/members/{user_id}",
        "Remove a user from a team (admin)",
        None,
        204,
        None,
    ),
]

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(
    method: str,
    path: str,
    summary: str,
    body: type[BaseModel] | None,
    status: int,
    result: type[BaseModel] | None,
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if method == "get" and result is not None and result.__name__.endswith("Page"):
        params += [
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            },
            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        ]
    responses: dict[str, Any] = {
        str(status): {"description": "success"}
        | ({"content": {"application/json": {"schema": _ref(result)}}} if result else {}),
    }
    errors = [("401", "unauthenticated"), ("403", "your role does not allow this")]
    errors.append(("404", "not found (or not a member)"))
    if method != "get":
        errors.append(("409", "conflict: slug/name taken, last owner, already a member"))
    if path.endswith("/accept"):
        errors.append(("410", "the invitation expired or was used"))
    if body is not None or method == "put":
        errors.append(("422", "invalid body, or the user is not an org member"))
    if any(p["name"] == "cursor" for p in params):
        errors.append(("400", "invalid cursor"))
    for code, why in errors:
        responses[code] = {
            "description": why,
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "parameters": params,
        "responses": responses,
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (computed once)."""
    models = {m for op in _OPERATIONS for m in (op[3], op[5]) if m is not None}
    _, defs = models_json_schema(
        [
            (m, "validation" if m.__name__.endswith(("Create", "Update")) else "serialization")
            for m in sorted(models, key=lambda m: m.__name__)
        ],
        ref_template=_REF,
    )
    components = dict(defs.get("$defs", {}))
    components["Problem"] = _PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, status, result in _OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, body, status, result)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portico orgs", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
