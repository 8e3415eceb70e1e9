"""This service's OpenAPI 3.1 document, on the public contract paths (the gateway merges it)."""

from __future__ import annotations

from functools import cache
from typing import Any

from services.files.schemas import FilePublic, FilesPage, FileUrl

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERRORS = {"401": _problem("Unauthenticated"), "404": _problem("Not found or not yours")}


@cache
def openapi_document() -> dict[str, Any]:
    """The document served at `GET /openapi.json`."""
    components: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
            },
        }
    }
    for model in (FilePublic, FilesPage, FileUrl):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    binary = {"type": "string", "format": "binary"}
    paths: dict[str, Any] = {
        "/api/v1/files": {
            "post": {
                "summary": "Upload a file (multipart `file` part, or the raw body)",
                "tags": ["files"],
                "parameters": [
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "org_id", "in": "query", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {"org_id": {"type": "string"}, "file": binary},
                            }
                        },
                        "application/octet-stream": {"schema": binary},
                    },
                },
                "responses": {
                    "201": _json("FilePublic", "Stored"),
                    "400": _problem("Malformed body"),
                    "401": _problem("Unauthenticated"),
                    "404": _problem("Org not found or not a member"),
                    "413": _problem("PAYLOAD_TOO_LARGE or QUOTA_EXCEEDED"),
                    "415": _problem("Content type not accepted"),
                },
            },
            "get": {
                "summary": "Own files, or an org's files for its members",
                "tags": ["files"],
                "parameters": [
                    {"name": "org_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("FilesPage", "A page"), **_ERRORS},
            },
        },
        "/api/v1/files/{id}": {
            "get": {
                "summary": "File metadata",
                "tags": ["files"],
                "parameters": [_ID],
                "responses": {"200": _json("FilePublic", "Metadata"), **_ERRORS},
            },
            "delete": {
                "summary": "Delete a file (uploader or org admin)",
                "tags": ["files"],
                "parameters": [_ID],
                "responses": {
                    "204": {"description": "Deleted"},
                    "403": _problem("Forbidden"),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/files/{id}/content": {
            "get": {
                "summary": "Download (Range, ETag/If-None-Match; or a signed URL)",
                "tags": ["files"],
                "parameters": [
                    _ID,
                    {"name": "expires", "in": "query", "schema": {"type": "string"}},
                    {"name": "signature", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The bytes", "content": {"*/*": {"schema": binary}}},
                    "206": {"description": "A range", "content": {"*/*": {"schema": binary}}},
                    "304": {"description": "Not modified"},
                    "403": _problem("Signed link invalid or expired"),
                    "416": _problem("Range not satisfiable"),
                    **_ERRORS,
                },
            },
        },
        "/api/v1/files/{id}/thumbnail": {
            "get": {
                "summary": "A thumbnail of an image file (404 until rendered, or not an image)",
                "tags": ["files"],
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": "JPEG, or PNG when the image has transparency",
                        "content": {
                            "image/jpeg": {"schema": binary},
                            "image/png": {"schema": binary},
                        },
                    },
                    "304": {"description": "Not modified"},
                    **_ERRORS,
                },
            },
        },
        "/api/v1/files/{id}/url": {
            "post": {
                "summary": "A short-lived signed download URL",
                "tags": ["files"],
                "parameters": [_ID],
                "responses": {"200": _json("FileUrl", "The URL"), **_ERRORS},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portico files", "version": "1.0.0"},
        "paths": paths,
        "components": {"schemas": components},
    }
