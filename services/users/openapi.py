"""The users service's OpenAPI 3.1 document, generated from its pydantic schemas.

Paths are the public contract paths; the gateway merges this document into its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.users import schemas as s

__all__ = ["openapi_document"]

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
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

# (method, path, summary, request model, status, response model, auth, error statuses)
Op = tuple[
    str, str, str, type[BaseModel] | None, int, type[BaseModel] | None, bool, tuple[int, ...]
]
_OPERATIONS: list[Op] = [
    (
        "post",
        "/api/v1/auth/register",
        "Create an account",
        s.RegisterRequest,
        201,
        s.UserPublic,
        False,
        (409, 422),
    ),
    (
        "post",
        "/api/v1/auth/login",
        "Sign in",
        s.LoginRequest,
        200,
        s.TokenResponse,
        False,
        (401, 403, 423, 429),
    ),
    (
        "post",
        "/api/v1/auth/refresh",
        "Exchange a refresh token for a new pair",
        s.RefreshRequest,
        200,
        s.TokenResponse,
        False,
        (401,),
    ),
    (
        "post",
        "/api/v1/auth/logout",
        "Sign out (this token and its session)",
        s.LogoutRequest,
        204,
        None,
        True,
        (401,),
    ),
    (
        "post",
        "/api/v1/auth/password",
        "Change the password",
        s.PasswordChange,
        204,
        None,
        True,
        (401, 422, 423),
    ),
    ("get", "/api/v1/auth/sessions", "List my sessions", None, 200, s.SessionsPage, True, (401,)),
    ("delete", "/api/v1/auth/sessions/{id}", "Revoke a session", None, 204, None, True, (401, 404)),
    (
        "post",
        "/api/v1/auth/password-reset",
        "Request a password reset",
        s.PasswordResetRequest,
        202,
        None,
        False,
        (422,),
    ),
    (
        "post",
        "/api/v1/auth/password-reset/confirm",
        "Set a new password with a reset token",
        s.PasswordResetConfirm,
        204,
        None,
        False,
        (410, 422),
    ),
    ("get", "/.well-known/jwks.json", "Token verification keys", None, 200, s.Jwks, False, ()),
    ("get", "/api/v1/users/me", "My user", None, 200, s.UserPublic, True, (401,)),
    (
        "patch",
        "/api/v1/users/me",
        "Update my profile",
        s.UserUpdate,
        200,
        s.UserPublic,
        True,
        (401, 422),
    ),
    ("delete", "/api/v1/users/me", "Delete my account", None, 204, None, True, (401,)),
    (
        "get",
        "/api/v1/users",
        "Search users by display name / email prefix",
        None,
        200,
        s.UsersPage,
        True,
        (400, 401, 422),
    ),
    (
        "post",
        "/api/v1/users/batch",
        "Fetch up to 100 users by id",
        s.UsersBatch,
        200,
        s.UsersBatchResult,
        True,
        (401, 422),
    ),
    (
        "get",
        "/api/v1/users/{id}",
        "A user's public profile",
        None,
        200,
        s.UserProfile,
        True,
        (401, 404),
    ),
    (
        "get",
        "/api/v1/admin/users",
        "List users (admin)",
        None,
        200,
        s.AdminUsersPage,
        True,
        (401, 403, 422),
    ),
    (
        "patch",
        "/api/v1/admin/users/{id}",
        "Set roles / disable (admin)",
        s.AdminUserUpdate,
        200,
        s.UserAdminView,
        True,
        (401, 403, 404, 409, 422),
    ),
    (
        "post",
        "/api/v1/api-keys",
        "Create an API key (the key is shown only here)",
        s.ApiKeyCreate,
        201,
        s.ApiKeyCreated,
        True,
        (401, 403, 422),
    ),
    ("get", "/api/v1/api-keys", "List my API keys", None, 200, s.ApiKeysPage, True, (401,)),
    ("delete", "/api/v1/api-keys/{id}", "Revoke an API key", None, 204, None, True, (401, 404)),
    (
        "patch",
        "/api/v1/admin/api-keys/{id}",
        "Set an API key's tier (admin)",
        s.ApiKeyTierUpdate,
        200,
        s.ApiKeyPublic,
        True,
        (401, 403, 404, 422),
    ),
]

_QUERY = {
    "/api/v1/users": ["q", "limit", "cursor"],
    "/api/v1/admin/users": ["q", "role", "disabled", "limit", "cursor"],
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every public route of the users service."""
    models = {m for op in _OPERATIONS for m in (op[3], op[5]) if m is not None}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    components = dict(defs.get("$defs", {}))
    components["Problem"] = _PROBLEM
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, status, response, auth, errors in _OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "tags": ["users"],
            "operationId": f"users_{method}_{_slug(path)}",
        }
        params = (
            [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
            if "{id}" in path
            else []
        )
        params += [
            {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
            for n in _QUERY.get(path, [])
            if method == "get"
        ]
        if params:
            op["parameters"] = params
        if request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{request.__name__}"}
                    }
                },
            }
        ok: dict[str, Any] = {"description": "success"}
        if response is not None:
            ok["content"] = {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{response.__name__}"}
                }
            }
        responses: dict[str, Any] = {str(status): ok}
        for code in (*((401,) if auth and 401 not in errors else ()), *errors):
            responses[str(code)] = {
                "description": "problem",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
        op["responses"] = responses
        op["security"] = [{"bearer": []}, {"apiKey": []}] if auth else []
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portico users service", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _slug(path: str) -> str:
    return "_".join(p.strip("{}").replace("-", "_").replace(".", "") for p in path.split("/") if p)
