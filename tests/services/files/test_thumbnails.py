"""Thumbnails: rendered by the `file.uploaded` consumer, served to whoever may read the file.

Images are real ones made with Pillow; hostile ones (a PNG header claiming 10^10 pixels, bytes
that only start like a PNG) must be declined without a thumbnail and without an error.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image
from pytest_aiohttp import AiohttpClient

from libs.common.mongo import MONGO
from services.files.app import create_app
from services.files.keys import FILES
from tests.services.files.conftest import files_settings, local_storage, s3_storage
from tests.services.files.test_files_api import (
    ALICE,
    BOB,
    PROBLEM,
    auth,
    dispatch,
    records,
    stored_keys,
    upload,
)

Client = TestClient[web.Request, web.Application]


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    color = (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)
    Image.new(mode, size, color).save(out, fmt)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


async def uploaded(client: Client, data: bytes, content_type: str, user: str = ALICE) -> str:
    response = await upload(client, user, data, content_type=content_type, name="pic")
    assert response.status == 201, await response.text()
    body = await response.json()
    await dispatch(client, "file.uploaded", {"file_id": body["id"], "owner_id": user})
    return str(body["id"])


async def thumbnail(client: Client, file_id: str, user: str = ALICE, **headers: str) -> Any:
    return await client.get(f"/api/v1/files/{file_id}/thumbnail", headers={**auth(user), **headers})


@pytest.fixture(params=["local", "s3"])
async def client(
    request: pytest.FixtureRequest,
    aiohttp_client: AiohttpClient,
    mongo_url: str,
    db_name: str,
    tmp_path: Path,
    unique: str,
) -> AsyncIterator[Client]:
    if request.param == "local":
        storage = local_storage(tmp_path)
    else:
        storage = s3_storage(request.getfixturevalue("moto_endpoint"), unique)
    settings = files_settings(mongo_url=mongo_url, db_name=db_name, storage=storage)
    client = await aiohttp_client(create_app(settings))
    yield client
    await client.app[MONGO].client.drop_database(client.app[MONGO].database.name)


async def test_a_photo_gets_a_small_jpeg_keeping_its_aspect(client: Client) -> None:
    file_id = await uploaded(client, image_bytes((1200, 600), "JPEG"), "image/jpeg")
    response = await thumbnail(client, file_id)
    assert response.status == 200, await response.text()
    assert response.content_type == "image/jpeg"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    with Image.open(io.BytesIO(await response.read())) as thumb:
        assert thumb.size == (256, 128)

    again = await thumbnail(client, file_id, **{"If-None-Match": response.headers["ETag"]})
    assert again.status == 304


async def test_transparency_is_kept_as_png(client: Client) -> None:
    file_id = await uploaded(client, image_bytes((64, 300), "PNG", "RGBA"), "image/png")
    response = await thumbnail(client, file_id)
    assert response.status == 200
    assert response.content_type == "image/png"
    with Image.open(io.BytesIO(await response.read())) as thumb:
        assert thumb.mode == "RGBA"
        assert max(thumb.size) <= 256


async def test_a_redelivered_event_stores_one_thumbnail(client: Client) -> None:
    file_id = await uploaded(client, image_bytes((500, 500), "PNG"), "image/png")
    await dispatch(client, "file.uploaded", {"file_id": file_id, "owner_id": ALICE})
    assert len(await stored_keys(client)) == 2  # the file and one thumbnail


async def test_other_users_get_404_for_the_thumbnail_too(client: Client) -> None:
    file_id = await uploaded(client, image_bytes((300, 300), "PNG"), "image/png")
    response = await thumbnail(client, file_id, user=BOB)
    assert response.status == 404
    assert response.content_type == PROBLEM
    unauthenticated = await client.get(f"/api/v1/files/{file_id}/thumbnail")
    assert unauthenticated.status == 401


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"plain words, not pixels\n", "text/plain"),
        (png_claiming(100_000, 100_000), "image/png"),  # a decompression bomb's header
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png"),  # a PNG signature, then junk
    ],
    ids=["not-an-image", "bomb", "corrupt"],
)
async def test_no_thumbnail_for_what_is_not_a_decodable_image(
    client: Client, data: bytes, content_type: str
) -> None:
    file_id = await uploaded(client, data, content_type)  # the handler must not raise
    response = await thumbnail(client, file_id)
    assert response.status == 404
    assert response.content_type == PROBLEM
    assert len(await stored_keys(client)) == 1
    [record] = await records(client)
    assert record.get("thumbnail_key") is None


async def test_deleting_the_file_deletes_its_thumbnail(client: Client) -> None:
    file_id = await uploaded(client, image_bytes((300, 200), "JPEG"), "image/jpeg")
    assert len(await stored_keys(client)) == 2
    deleted = await client.delete(f"/api/v1/files/{file_id}", headers=auth(ALICE))
    assert deleted.status == 204
    assert await stored_keys(client) == []
    assert (await thumbnail(client, file_id)).status == 404


async def test_the_sweeper_keeps_live_thumbnails(client: Client) -> None:
    await uploaded(client, image_bytes((300, 200), "JPEG"), "image/jpeg")
    later = datetime.now(UTC) + timedelta(hours=2)
    report = await client.app[FILES].sweep(now=later)
    assert report.orphan_blobs == 0
    assert len(await stored_keys(client)) == 2
