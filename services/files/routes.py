"""Thin HTTP handlers of the files service: parse -> FileService -> render."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from libs.common.errors import BadRequest, InvalidInput, RangeNotSatisfiable
from libs.common.http import json_response, parse_query, principal
from libs.common.pagination import decode_cursor, encode_cursor, page_response
from services.files.content import (
    TEXT_TYPES,
    Unsatisfiable,
    content_disposition,
    parse_range,
    sanitize_name,
)
from services.files.keys import FILES, STORAGE
from services.files.models import FileRecord
from services.files.openapi import openapi_document
from services.files.schemas import FilePublic, FilesQuery, FileUrl, SignedQuery, UploadQuery

routes = web.RouteTableDef()
CHUNK = 256 * 1024
_MAX_FIELD = 256
# Errors aiohttp's multipart parser raises on a malformed body (a bad part header line raises
# http_exceptions.InvalidHeader, an HttpProcessingError).
_MALFORMED = (ValueError, AssertionError, RuntimeError, LookupError, HttpProcessingError)


def _surrogate_key(record: FileRecord) -> str:
    keys = [f"file:{record.id}", f"user:{record.owner_id}"]
    if record.org_id:
        keys.append(f"org:{record.org_id}")
    return " ".join(keys)


@routes.post("/api/v1/files")
async def upload_file(request: web.Request) -> web.Response:
    who = principal(request)
    query = parse_query(request, UploadQuery)
    files = request.app[FILES]
    limit = files.settings.name_max_length
    if request.headers.get(hdrs.CONTENT_TYPE, "").lower().startswith("multipart/"):
        org_id, part = await _multipart_file(request, query.org_id)
        record = await files.upload(
            owner_id=who.id,
            org_id=org_id,
            name=sanitize_name(part.filename or query.name, max_length=limit),
            declared_type=part.headers.get(hdrs.CONTENT_TYPE),
            chunks=_part_chunks(part),
        )
    else:
        record = await files.upload(
            owner_id=who.id,
            org_id=query.org_id,
            name=sanitize_name(query.name, max_length=limit),
            declared_type=request.headers.get(hdrs.CONTENT_TYPE),
            chunks=_body_chunks(request),
            expected_size=request.content_length,
        )
    return json_response(
        FilePublic.from_model(record),
        status=201,
        headers={hdrs.LOCATION: f"/api/v1/files/{record.id}"},
    )


async def _multipart_file(
    request: web.Request, org_id: str | None
) -> tuple[str | None, BodyPartReader]:
    """Fields before the `file` part (only `org_id` is read), then the file part itself.
    The file part is streamed by the caller, so `org_id` must come before it."""
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise InvalidInput("a `file` part is required")
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            if part.name == "file":
                return org_id, part
            if part.name == "org_id":
                raw = bytearray()
                while chunk := await part.read_chunk(_MAX_FIELD):
                    raw += chunk
                    if len(raw) > _MAX_FIELD:
                        raise InvalidInput("org_id is too long")
                org_id = raw.decode("utf-8", "replace").strip() or None
            else:
                await part.release()
    except _MALFORMED:
        raise BadRequest("the multipart body is malformed") from None


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await part.read_chunk(CHUNK)
        except _MALFORMED:
            raise BadRequest("the multipart body is malformed") from None
        if not chunk:
            return
        yield chunk


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


@routes.get("/api/v1/files")
async def list_files(request: web.Request) -> web.Response:
    who = principal(request)
    query = parse_query(request, FilesQuery)
    cursor = decode_cursor(query.cursor)
    before = str(cursor["before"]) if cursor and "before" in cursor else None
    items, next_before = await request.app[FILES].list_files(
        user_id=who.id, org_id=query.org_id, limit=query.limit, before=before
    )
    next_cursor = encode_cursor({"before": next_before}) if next_before else None
    keys = [f"user:{who.id}"] + ([f"org:{query.org_id}"] if query.org_id else [])
    keys += [f"file:{item.id}" for item in items]
    return page_response(
        request,
        [FilePublic.from_model(item).model_dump(mode="json") for item in items],
        next_cursor,
        headers={"Surrogate-Key": " ".join(keys), hdrs.CACHE_CONTROL: "private, no-cache"},
    )


@routes.get("/api/v1/files/{id}")
async def get_file(request: web.Request) -> web.Response:
    record = await request.app[FILES].readable(request.match_info["id"], principal(request).id)
    return json_response(
        FilePublic.from_model(record),
        headers={"Surrogate-Key": _surrogate_key(record), hdrs.CACHE_CONTROL: "private"},
    )


@routes.delete("/api/v1/files/{id}")
async def delete_file(request: web.Request) -> web.Response:
    await request.app[FILES].delete(request.match_info["id"], user_id=principal(request).id)
    return web.Response(status=204)


@routes.get("/api/v1/files/{id}/thumbnail")
async def get_thumbnail(request: web.Request) -> web.Response:
    record, data = await request.app[FILES].thumbnail(
        request.match_info["id"], principal(request).id
    )
    etag = f'"{record.sha256}-thumb"'
    headers = {
        hdrs.ETAG: etag,
        hdrs.CACHE_CONTROL: "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        "Surrogate-Key": _surrogate_key(record),
    }
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=record.thumbnail_type, headers=headers)


@routes.post("/api/v1/files/{id}/url")
async def sign_url(request: web.Request) -> web.Response:
    files = request.app[FILES]
    record = await files.readable(request.match_info["id"], principal(request).id)
    signed = await files.signed_url(record)
    return json_response(
        FileUrl(url=signed.url, expires_at=signed.expires_at),
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


@routes.get("/api/v1/files/{id}/content")
async def download_file(request: web.Request) -> web.StreamResponse:
    files = request.app[FILES]
    file_id = request.match_info["id"]
    if "signature" in request.query or "expires" in request.query:
        signed = parse_query(request, SignedQuery)
        record = await files.by_signature(
            file_id, expires=signed.expires, signature=signed.signature
        )
    else:
        record = await files.readable(file_id, principal(request).id)
    return await _send(request, record)


def _etag_matches(header: str, etag: str) -> bool:
    # RFC 9110 §13.1.2: weak comparison, a list of tags or `*`.
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


async def _send(request: web.Request, record: FileRecord) -> web.StreamResponse:
    etag = f'"{record.sha256}"'
    headers = {
        hdrs.ETAG: etag,
        hdrs.ACCEPT_RANGES: "bytes",
        hdrs.CACHE_CONTROL: "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        hdrs.CONTENT_DISPOSITION: content_disposition(record.name),
    }
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    range_header = request.headers.get(hdrs.RANGE)
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's copy is stale: send it all
    try:
        wanted = parse_range(range_header, record.size)
    except Unsatisfiable:
        raise RangeNotSatisfiable(
            headers={hdrs.CONTENT_RANGE: f"bytes */{record.size}", hdrs.ACCEPT_RANGES: "bytes"}
        ) from None
    response = web.StreamResponse(status=200 if wanted is None else 206, headers=headers)
    response.content_type = record.content_type
    if record.content_type in TEXT_TYPES:
        response.charset = "utf-8"  # sniffing checked the bytes are UTF-8
    start, end = 0, record.size - 1
    if wanted is not None:
        start, end = wanted.start, wanted.end
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end}/{record.size}"
    response.content_length = end - start + 1
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD and record.size > 0:
        async for chunk in request.app[STORAGE].get(record.object_key, start, end):
            await response.write(chunk)
    await response.write_eof()
    return response


@routes.get("/openapi.json")
async def openapi(_: web.Request) -> web.Response:
    return json_response(openapi_document())
