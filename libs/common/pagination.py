"""Cursor pagination as the contract describes: `{items, next_cursor}` plus a `Link` header."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from libs.common.errors import BadRequest
from libs.common.http import json_response

__all__ = ["PageParams", "decode_cursor", "encode_cursor", "page_response"]


class PageParams(BaseModel):
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


def encode_cursor(position: dict[str, Any]) -> str:
    """An opaque cursor for the position after the last returned item."""
    return base64.urlsafe_b64encode(orjson.dumps(position)).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The position a cursor encodes; a forged or garbled cursor is a 400."""
    if not cursor:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor") from None
    if not isinstance(value, dict):
        raise BadRequest("invalid cursor")
    return value


def page_response(
    request: web.Request,
    items: list[Any],
    next_cursor: str | None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The page body, with `Link: <...>; rel="next"` when there is a next page."""
    out_headers = dict(headers or {})
    if next_cursor:
        query = {k: v for k, v in request.query.items() if k != "cursor"}
        query["cursor"] = next_cursor
        out_headers["Link"] = f'<{request.path}?{urlencode(query)}>; rel="next"'
    return json_response({"items": items, "next_cursor": next_cursor}, headers=out_headers)
