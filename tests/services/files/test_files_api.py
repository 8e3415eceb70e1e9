"""The files API against both storage backends: one contract, subclassed per backend.

Every test checks what a client sees (status, body, headers) and what was or was not stored
(records in the `files` collection, objects in the backend, events in the `outbox`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from libs.common.events import Event
from libs.common.mongo import MONGO
from services.files.app import create_app
from services.files.keys import CONSUMERS, FILES, STORAGE
from tests.conftest import identity_headers
from tests.services.files.conftest import MiB, files_settings, local_storage, s3_storage

ALICE, BOB, CAROL = "user-alice", "user-bob", "user-carol"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"
PROBLEM = "application/problem+json"

MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


def png(size: int) -> bytes:
    return PNG + os.urandom(max(0, size - len(PNG)))


def auth(user: str) -> dict[str, str]:
    return identity_headers(user)


async def upload(
    client: Client,
    user: str,
    data: Any,
    *,
    content_type: str | None = "image/png",
    name: str | None = "a.png",
    org_id: str | None = None,
) -> Any:
    params = {k: v for k, v in (("name", name), ("org_id", org_id)) if v is not None}
    headers = auth(user)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await client.post("/api/v1/files", data=data, params=params, headers=headers)


async def upload_form(
    client: Client,
    user: str,
    data: bytes,
    *,
    filename: str = "a.png",
    content_type: str = "image/png",
    org_id: str | None = None,
) -> Any:
    form = FormData()
    if org_id is not None:
        form.add_field("org_id", org_id)
    form.add_field("file", data, filename=filename, content_type=content_type)
    return await client.post("/api/v1/files", data=form, headers=auth(user))


async def stored_keys(client: Client) -> list[str]:
    return [item.key async for item in client.app[STORAGE].list()]


async def records(client: Client) -> list[dict[str, Any]]:
    return await client.app[MONGO].database["files"].find({}).to_list()


async def outbox(client: Client) -> list[tuple[str, dict[str, Any]]]:
    rows = await client.app[MONGO].database["outbox"].find({}).sort("_id").to_list()
    return [(row["type"], row["data"]) for row in rows]


async def dispatch(client: Client, type: str, data: dict[str, Any], **extra: Any) -> None:
    """Deliver an event to the service's registered handler, as the bus runtime would."""
    event = Event(type=type, source="test", data=data, **extra)
    handlers = [h for keys, h in client.app[CONSUMERS].bindings if type in keys]
    assert handlers, f"no handler for {type}"
    for handler in handlers:
        await handler(event)


async def join(
    client: Client, org_id: str, user_id: str, role: str = "member", at: datetime | None = None
) -> None:
    data = {"org_id": org_id, "user_id": user_id, "role": role}
    await dispatch(client, "org.member_added", data, occurred_at=at or datetime.now(UTC))


async def assert_nothing_stored(client: Client) -> None:
    assert await records(client) == []
    assert await stored_keys(client) == []
    assert [t for t, _ in await outbox(client)] == []


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class FilesContract:
    """Behaviour every storage backend must show. Subclasses provide `storage_config`."""

    large_mib = 300

    @pytest.fixture
    def storage_config(self) -> dict[str, object]:
        raise NotImplementedError

    @pytest.fixture
    def make_client(
        self,
        aiohttp_client: AiohttpClient,
        mongo_url: str,
        db_name: str,
        storage_config: dict[str, object],
    ) -> MakeClient:
        async def make(**overrides: object) -> Client:
            settings = files_settings(
                mongo_url=mongo_url, db_name=db_name, storage=storage_config, **overrides
            )
            return await aiohttp_client(create_app(settings))

        return make

    @pytest.fixture
    async def client(self, make_client: MakeClient) -> AsyncIterator[Client]:
        client = await make_client()
        yield client
        await client.app[MONGO].client.drop_database(client.app[MONGO].database.name)

    # --- round trips --------------------------------------------------------------------------

    async def test_raw_upload_round_trip_keeps_every_byte(self, client: Client) -> None:
        data = png(6 * MiB + 123)  # > one S3 part: exercises the multipart path
        response = await upload(client, ALICE, data, name="photo.png")
        assert response.status == 201, await response.text()
        body = await response.json()
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
        assert (body["size"], body["content_type"], body["name"]) == (
            len(data),
            "image/png",
            "photo.png",
        )
        assert (body["owner_id"], body["org_id"]) == (ALICE, None)
        assert response.headers["Location"] == f"/api/v1/files/{body['id']}"

        got = await client.get(f"/api/v1/files/{body['id']}/content", headers=auth(ALICE))
        assert got.status == 200
        content = await got.read()
        assert hashlib.sha256(content).hexdigest() == body["sha256"]
        assert got.headers["ETag"] == f'"{body["sha256"]}"'
        assert got.headers["Content-Type"] == "image/png"
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Accept-Ranges"] == "bytes"
        assert got.headers["Content-Disposition"].startswith('attachment; filename="photo.png"')

        meta = await client.get(f"/api/v1/files/{body['id']}", headers=auth(ALICE))
        assert await meta.json() == body
        assert meta.headers["Surrogate-Key"] == f"file:{body['id']} user:{ALICE}"
        assert [(t, d["file_id"], d["size"]) for t, d in await outbox(client)] == [
            ("file.uploaded", body["id"], len(data))
        ]
        [record] = await records(client)
        assert await stored_keys(client) == [record["object_key"]]
        assert "photo" not in record["object_key"]

    async def test_multipart_upload_into_an_org_is_shared_with_its_members(
        self, client: Client
    ) -> None:
        await dispatch(client, "org.created", {"org_id": "org1", "user_id": ALICE})
        await join(client, "org1", BOB)
        text = "naïve,csv\n1,2\n".encode()
        response = await upload_form(
            client, ALICE, text, filename="data.csv", content_type="text/csv", org_id="org1"
        )
        assert response.status == 201, await response.text()
        body = await response.json()
        assert (body["org_id"], body["content_type"], body["size"]) == (
            "org1",
            "text/csv",
            len(text),
        )
        got = await client.get(f"/api/v1/files/{body['id']}/content", headers=auth(BOB))
        assert await got.read() == text
        meta = await client.get(f"/api/v1/files/{body['id']}", headers=auth(BOB))
        assert meta.headers["Surrogate-Key"] == f"file:{body['id']} user:{ALICE} org:org1"
        assert (await client.get(f"/api/v1/files/{body['id']}", headers=auth(CAROL))).status == 404
        listed = await client.get("/api/v1/files", params={"org_id": "org1"}, headers=auth(BOB))
        assert [item["id"] for item in (await listed.json())["items"]] == [body["id"]]
        refused = await client.get("/api/v1/files", params={"org_id": "org1"}, headers=auth(CAROL))
        assert refused.status == 404

    async def test_upload_into_an_org_you_are_not_in_is_refused(self, client: Client) -> None:
        response = await upload_form(client, BOB, png(100), org_id="org-x")
        assert response.status == 404
        await assert_nothing_stored(client)

    async def test_zero_byte_file_round_trips(self, client: Client) -> None:
        response = await upload(client, ALICE, b"", content_type="text/plain", name="empty.txt")
        assert response.status == 201, await response.text()
        body = await response.json()
        assert (body["size"], body["sha256"]) == (0, hashlib.sha256(b"").hexdigest())
        got = await client.get(f"/api/v1/files/{body['id']}/content", headers=auth(ALICE))
        assert (got.status, await got.read()) == (200, b"")
        ranged = await client.get(
            f"/api/v1/files/{body['id']}/content", headers={**auth(ALICE), "Range": "bytes=0-"}
        )
        assert ranged.status == 416
        assert ranged.headers["Content-Range"] == "bytes */0"

    async def test_large_stream_keeps_memory_flat(self, make_client: MakeClient) -> None:
        client = await make_client(
            max_upload_size=(self.large_mib + 1) * MiB, user_quota_bytes=2048 * MiB
        )
        block = os.urandom(MiB)
        block = PNG + block[len(PNG) :]
        expected = hashlib.sha256()
        for _ in range(self.large_mib):
            expected.update(block)
        baseline = rss_bytes()
        peak = baseline
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes())
                await asyncio.sleep(0.02)

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(self.large_mib):
                yield block

        sampler = asyncio.create_task(sample())
        response = await upload(client, ALICE, stream(), name="big.png")
        assert response.status == 201, await response.text()
        body = await response.json()
        got = await client.get(f"/api/v1/files/{body['id']}/content", headers=auth(ALICE))
        digest = hashlib.sha256()
        size = 0
        async for chunk in got.content.iter_chunked(MiB):
            digest.update(chunk)
            size += len(chunk)
        done.set()
        await sampler
        assert (size, body["size"]) == (self.large_mib * MiB, self.large_mib * MiB)
        assert digest.hexdigest() == body["sha256"] == expected.hexdigest()
        assert peak - baseline < 60 * MiB, f"RSS grew by {(peak - baseline) / MiB:.0f} MiB"
        await client.delete(f"/api/v1/files/{body['id']}", headers=auth(ALICE))
        assert await stored_keys(client) == []

    # --- ranges and caching -------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("header", "status", "span"),
        [
            ("bytes=0-0", 206, (0, 0)),  # first byte
            ("bytes=999-999", 206, (999, 999)),  # last byte
            ("bytes=-10", 206, (990, 999)),  # suffix
            ("bytes=-5000", 206, (0, 999)),  # suffix longer than the file: all of it
            ("bytes=500-", 206, (500, 999)),  # open-ended
            ("bytes=900-5000", 206, (900, 999)),  # end clamped to the size
            ("bytes=1000-", 416, None),  # starts at the end
            ("bytes=5000-6000", 416, None),  # beyond the end
            ("bytes=-0", 416, None),  # empty suffix
            ("bytes=0-1,5-9", 200, None),  # several ranges: we send the whole file
            ("bytes=9-3", 200, None),  # invalid: ignored (RFC 9110 §14.2)
            ("items=0-1", 200, None),  # other units: ignored
            ("bytes=abc", 200, None),  # malformed: ignored
        ],
    )
    async def test_range_requests(
        self, client: Client, header: str, status: int, span: tuple[int, int] | None
    ) -> None:
        data = png(1000)
        file_id = (await (await upload(client, ALICE, data)).json())["id"]
        got = await client.get(
            f"/api/v1/files/{file_id}/content", headers={**auth(ALICE), "Range": header}
        )
        assert got.status == status
        if status == 206:
            assert span is not None
            start, end = span
            assert got.headers["Content-Range"] == f"bytes {start}-{end}/1000"
            assert await got.read() == data[start : end + 1]
            assert got.headers["Content-Length"] == str(end - start + 1)
        elif status == 416:
            assert got.headers["Content-Range"] == "bytes */1000"
            assert got.content_type == PROBLEM
            assert (await got.json())["code"] == "RANGE_NOT_SATISFIABLE"
        else:
            assert await got.read() == data

    async def test_if_none_match_and_if_range(self, client: Client) -> None:
        data = png(2000)
        body = await (await upload(client, ALICE, data)).json()
        url = f"/api/v1/files/{body['id']}/content"
        etag = f'"{body["sha256"]}"'
        cached = await client.get(url, headers={**auth(ALICE), "If-None-Match": etag})
        assert (cached.status, await cached.read()) == (304, b"")
        assert cached.headers["ETag"] == etag
        other = await client.get(url, headers={**auth(ALICE), "If-None-Match": '"nope"'})
        assert other.status == 200
        stale = await client.get(
            url, headers={**auth(ALICE), "Range": "bytes=0-9", "If-Range": '"old"'}
        )
        assert (stale.status, await stale.read()) == (200, data)
        fresh = await client.get(
            url, headers={**auth(ALICE), "Range": "bytes=0-9", "If-Range": etag}
        )
        assert (fresh.status, await fresh.read()) == (206, data[:10])

    # --- limits -------------------------------------------------------------------------------

    async def test_oversized_upload_with_length_is_refused_before_reading(
        self, client: Client
    ) -> None:
        response = await upload(client, ALICE, png(8 * MiB + 1))
        assert response.status == 413
        assert (await response.json())["code"] == "PAYLOAD_TOO_LARGE"
        await assert_nothing_stored(client)

    async def test_oversized_stream_is_cut_off_and_removed(self, client: Client) -> None:
        async def stream() -> AsyncIterator[bytes]:
            yield PNG
            for _ in range(12):
                yield os.urandom(MiB)

        response = await upload(client, ALICE, stream())
        assert response.status == 413
        assert (await response.json())["code"] == "PAYLOAD_TOO_LARGE"
        await assert_nothing_stored(client)

    async def test_oversized_multipart_upload_leaves_nothing(self, client: Client) -> None:
        response = await upload_form(client, ALICE, png(9 * MiB))
        assert response.status == 413
        await assert_nothing_stored(client)

    async def test_quota_is_checked_before_and_enforced_during_upload(
        self, make_client: MakeClient
    ) -> None:
        client = await make_client(user_quota_bytes=3 * MiB)
        first = await upload(client, ALICE, png(2 * MiB))
        assert first.status == 201
        before = await upload(client, ALICE, png(2 * MiB))  # Content-Length says it won't fit
        assert before.status == 413
        assert (await before.json())["code"] == "QUOTA_EXCEEDED"

        async def stream() -> AsyncIterator[bytes]:  # no length: enforced while streaming
            yield png(MiB)
            yield os.urandom(MiB)

        during = await upload(client, ALICE, stream())
        assert during.status == 413
        assert (await during.json())["code"] == "QUOTA_EXCEEDED"
        form = await upload_form(client, ALICE, png(2 * MiB))
        assert form.status == 413
        assert len(await records(client)) == 1
        assert len(await stored_keys(client)) == 1
        assert [t for t, _ in await outbox(client)] == ["file.uploaded"]
        # Bob's quota is his own.
        assert (await upload(client, BOB, png(2 * MiB))).status == 201

    @pytest.mark.parametrize(
        ("data", "declared"),
        [
            (b"just some text", "image/png"),  # text claiming to be an image
            (PNG + b"rest", "text/plain"),  # an image claiming to be text
            (PNG + b"rest", "application/pdf"),  # an image claiming to be a PDF
            (b"MZ\x90\x00\x03\x00\x00\x00" + os.urandom(600), "application/octet-stream"),
            (b"<html><script>alert(1)</script>", "text/html"),  # text, type not allowed
            (b"\xff\xfe\x00\x00garbage" + bytes(range(256)), None),  # unknown binary
        ],
    )
    async def test_spoofed_or_unknown_types_are_refused(
        self, client: Client, data: bytes, declared: str | None
    ) -> None:
        response = await upload(client, ALICE, data, content_type=declared)
        assert response.status == 415
        assert (await response.json())["code"] == "UNSUPPORTED_MEDIA_TYPE"
        form = await upload_form(client, ALICE, data, content_type=declared or "image/gif")
        assert form.status == 415
        await assert_nothing_stored(client)

    async def test_octet_stream_declaration_takes_the_sniffed_type(self, client: Client) -> None:
        gif = b"GIF89a" + os.urandom(100)
        response = await upload(client, ALICE, gif, content_type="application/octet-stream")
        assert (await response.json())["content_type"] == "image/gif"
        json_doc = await upload_form(
            client, ALICE, b' {"a": 1}', filename="x.json", content_type="application/octet-stream"
        )
        assert (await json_doc.json())["content_type"] == "application/json"

    # --- names --------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("raw", "shown"),
        [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("evil\r\nSet-Cookie: a=1.txt", "evilSet-Cookie_ a=1.txt"),
            ('quo"te\x00d.txt', "quo_ted.txt"),
            ("...", "file"),
            ("résumé 📄.txt", "résumé 📄.txt"),
        ],
    )
    async def test_file_names_are_neutralized(self, client: Client, raw: str, shown: str) -> None:
        response = await upload(client, ALICE, b"hello", content_type="text/plain", name=raw)
        assert response.status == 201, await response.text()
        body = await response.json()
        assert body["name"] == shown
        got = await client.get(f"/api/v1/files/{body['id']}/content", headers=auth(ALICE))
        disposition = got.headers["Content-Disposition"]
        assert not {"\r", "\n", "/"} & set(disposition)
        assert "Set-Cookie" not in got.headers
        assert disposition.startswith("attachment; filename=")
        assert "filename*=UTF-8''" in disposition
        [record] = await records(client)
        assert all(part not in record["object_key"] for part in ("..", "/", "passwd", "evil"))

    @pytest.mark.parametrize(
        ("raw", "shown"),
        [("../../etc/passwd", "passwd"), ("C:\\x\\boot.ini", "boot.ini"), ("ü 📄.txt", "ü 📄.txt")],
    )
    async def test_multipart_file_names_are_neutralized(
        self, client: Client, raw: str, shown: str
    ) -> None:
        form = FormData(quote_fields=False)  # the raw name, as a browser would send it
        form.add_field("file", b"hello", filename=raw, content_type="text/plain")
        response = await client.post("/api/v1/files", data=form, headers=auth(ALICE))
        assert response.status == 201, await response.text()
        assert (await response.json())["name"] == shown

    async def test_long_names_are_capped_keeping_the_extension(self, client: Client) -> None:
        response = await upload(
            client, ALICE, b"x", content_type="text/plain", name="n" * 5000 + ".txt"
        )
        assert response.status == 422  # the query parameter itself is capped
        response = await upload(
            client, ALICE, b"x", content_type="text/plain", name="n" * 400 + ".txt"
        )
        name = (await response.json())["name"]
        assert (len(name), name[-4:]) == (255, ".txt")

    # --- access -------------------------------------------------------------------------------

    async def test_other_users_cannot_see_or_touch_a_file(self, client: Client) -> None:
        file_id = (await (await upload(client, ALICE, png(100))).json())["id"]
        for method, path in [
            ("GET", f"/api/v1/files/{file_id}"),
            ("GET", f"/api/v1/files/{file_id}/content"),
            ("POST", f"/api/v1/files/{file_id}/url"),
            ("DELETE", f"/api/v1/files/{file_id}"),
        ]:
            response = await client.request(method, path, headers=auth(BOB))
            assert response.status == 404, (method, path)
            assert response.content_type == PROBLEM
            anonymous = await client.request(method, path)
            assert anonymous.status == 401, (method, path)
        listed = await (await client.get("/api/v1/files", headers=auth(BOB))).json()
        assert listed["items"] == []
        assert len(await records(client)) == 1

    async def test_unknown_and_malformed_ids_are_404(self, client: Client) -> None:
        for file_id in ("0123456789abcdef01234567", "not-an-id", "../etc"):
            response = await client.get(f"/api/v1/files/{file_id}", headers=auth(ALICE))
            assert response.status == 404

    async def test_forged_identity_is_refused(self, client: Client) -> None:
        forged = identity_headers(ALICE, secret="not-the-secret-at-all-0123456789")
        response = await client.post("/api/v1/files", data=b"hi", headers=forged)
        assert response.status == 401
        await assert_nothing_stored(client)

    async def test_org_files_are_deleted_by_uploader_and_admins_only(self, client: Client) -> None:
        await dispatch(client, "org.created", {"org_id": "org1", "user_id": ALICE})
        await join(client, "org1", BOB, "member")
        await join(client, "org1", CAROL, "admin")
        ids = [
            (await (await upload(client, BOB, png(50), org_id="org1")).json())["id"]
            for _ in range(3)
        ]
        assert (
            await client.delete(f"/api/v1/files/{ids[0]}", headers=auth("stranger"))
        ).status == 404
        await join(client, "org1", "dave", "member")
        refused = await client.delete(f"/api/v1/files/{ids[0]}", headers=auth("dave"))
        assert refused.status == 403
        assert (await client.delete(f"/api/v1/files/{ids[0]}", headers=auth(BOB))).status == 204
        assert (await client.delete(f"/api/v1/files/{ids[1]}", headers=auth(CAROL))).status == 204
        assert (await client.delete(f"/api/v1/files/{ids[2]}", headers=auth(ALICE))).status == 204
        assert await records(client) == []
        assert await stored_keys(client) == []
        assert [t for t, _ in await outbox(client)].count("file.deleted") == 3
        assert (await client.get(f"/api/v1/files/{ids[0]}", headers=auth(BOB))).status == 404

    async def test_membership_view_follows_events_in_event_time(self, client: Client) -> None:
        await join(client, "org1", ALICE, "owner")
        file_id = (await (await upload(client, ALICE, png(50), org_id="org1")).json())["id"]
        now = datetime.now(UTC)
        await join(client, "org1", BOB, "member", at=now)
        assert (await client.get(f"/api/v1/files/{file_id}", headers=auth(BOB))).status == 200
        await dispatch(
            client,
            "org.member_removed",
            {"org_id": "org1", "user_id": BOB},
            occurred_at=now + timedelta(seconds=1),
        )
        assert (await client.get(f"/api/v1/files/{file_id}", headers=auth(BOB))).status == 404
        # A late, older "added" (redelivered or reordered) does not bring him back.
        await join(client, "org1", BOB, "admin", at=now)
        assert (await client.get(f"/api/v1/files/{file_id}", headers=auth(BOB))).status == 404
        await join(client, "org1", BOB, "admin", at=now + timedelta(seconds=2))
        assert (await client.delete(f"/api/v1/files/{file_id}", headers=auth(BOB))).status == 204

    # --- cascades -----------------------------------------------------------------------------

    async def test_user_deleted_removes_personal_files_but_not_org_files(
        self, client: Client
    ) -> None:
        await join(client, "org1", ALICE, "owner")
        mine = [(await (await upload(client, ALICE, png(64))).json())["id"] for _ in range(2)]
        shared = (await (await upload(client, ALICE, png(64), org_id="org1")).json())["id"]
        bobs = (await (await upload(client, BOB, png(64))).json())["id"]
        await dispatch(client, "user.deleted", {"user_id": ALICE})
        await dispatch(client, "user.deleted", {"user_id": ALICE})  # redelivery: no-op
        left = {str(r["_id"]) for r in await records(client)}
        assert left == {shared, bobs}
        assert len(await stored_keys(client)) == 2
        deleted = [d["file_id"] for t, d in await outbox(client) if t == "file.deleted"]
        assert sorted(deleted) == sorted(mine)

    async def test_org_deleted_removes_the_org_files(self, client: Client) -> None:
        await join(client, "org1", ALICE, "owner")
        await join(client, "org2", ALICE, "owner")
        for _ in range(2):
            await upload(client, ALICE, png(64), org_id="org1")
        keep = (await (await upload(client, ALICE, png(64), org_id="org2")).json())["id"]
        await dispatch(client, "org.deleted", {"org_id": "org1"})
        assert {str(r["_id"]) for r in await records(client)} == {keep}
        assert len(await stored_keys(client)) == 1
        # The org is gone from the membership view too.
        listed = await client.get("/api/v1/files", params={"org_id": "org1"}, headers=auth(ALICE))
        assert listed.status == 404

    # --- signed URLs --------------------------------------------------------------------------

    async def test_signed_url_works_without_identity_until_it_expires(self, client: Client) -> None:
        data = png(300)
        file_id = (await (await upload(client, ALICE, data)).json())["id"]
        response = await client.post(f"/api/v1/files/{file_id}/url", headers=auth(ALICE))
        assert response.status == 200
        body = await response.json()
        url = urlsplit(body["url"])
        assert f"{url.scheme}://{url.netloc}" == "http://127.0.0.1:8080"
        assert url.path == f"/api/v1/files/{file_id}/content"
        expires_at = datetime.fromisoformat(body["expires_at"])
        assert timedelta(0) < expires_at - datetime.now(UTC) <= timedelta(seconds=901)
        anonymous = await client.get(f"{url.path}?{url.query}")
        assert (anonymous.status, await anonymous.read()) == (200, data)

        tampered_sig = url.query.replace("signature=", "signature=0")
        other = (await (await upload(client, ALICE, png(10))).json())["id"]
        for path in (
            f"{url.path}?{tampered_sig}",
            f"{url.path}?{url.query.replace('expires=', 'expires=9')}",
            f"/api/v1/files/{other}/content?{url.query}",
            f"{url.path}?expires=abc&signature=x",
        ):
            refused = await client.get(path)
            assert refused.status == 403, path
            assert (await refused.json())["code"] == "FORBIDDEN"

        old = await client.app[FILES].signed_url(
            await client.app[FILES].readable(file_id, ALICE),
            now=datetime.now(UTC) - timedelta(hours=1),
        )
        expired = urlsplit(old.url)
        assert (await client.get(f"{expired.path}?{expired.query}")).status == 403

    async def test_signed_url_of_a_deleted_file_is_404(self, client: Client) -> None:
        file_id = (await (await upload(client, ALICE, png(30))).json())["id"]
        url = urlsplit(
            (await (await client.post(f"/api/v1/files/{file_id}/url", headers=auth(ALICE))).json())[
                "url"
            ]
        )
        await client.delete(f"/api/v1/files/{file_id}", headers=auth(ALICE))
        assert (await client.get(f"{url.path}?{url.query}")).status == 404

    # --- hostile input ------------------------------------------------------------------------

    async def test_malformed_multipart_is_refused_and_stores_nothing(self, client: Client) -> None:
        cases: list[tuple[str, bytes]] = [
            ("multipart/form-data", b"--x\r\n\r\nhello"),  # no boundary
            ("multipart/form-data; boundary=xyz", b"garbage without any boundary"),
            ("multipart/form-data; boundary=xyz",
             b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--xyz--\r\n'),
        ]  # fmt: skip
        for content_type, payload in cases:
            response = await upload(client, ALICE, payload, content_type=content_type)
            assert response.status in (400, 422), (content_type, payload, response.status)
            assert response.content_type == PROBLEM
        await assert_nothing_stored(client)

    async def test_hostile_query_and_cursor(self, client: Client) -> None:
        bad_cursor = await client.get(
            "/api/v1/files", params={"cursor": "!!!"}, headers=auth(ALICE)
        )
        assert bad_cursor.status == 400
        bad_limit = await client.get("/api/v1/files", params={"limit": "1000"}, headers=auth(ALICE))
        assert bad_limit.status == 422
        anonymous = await client.get("/api/v1/files")
        assert anonymous.status == 401

    async def test_listing_is_cursor_paginated(self, client: Client) -> None:
        ids = [(await (await upload(client, ALICE, png(20))).json())["id"] for _ in range(5)]
        await upload(client, BOB, png(20))
        seen: list[str] = []
        params = {"limit": "2"}
        pages = 0
        while True:
            page = await client.get("/api/v1/files", params=params, headers=auth(ALICE))
            body = await page.json()
            seen += [item["id"] for item in body["items"]]
            pages += 1
            if not body["next_cursor"]:
                assert "Link" not in page.headers
                break
            assert 'rel="next"' in page.headers["Link"]
            params = {"limit": "2", "cursor": body["next_cursor"]}
        assert seen == list(reversed(ids))
        assert pages == 3

    # --- consistency --------------------------------------------------------------------------

    async def test_sweeper_removes_orphans_and_stuck_uploads_only_when_stale(
        self, client: Client
    ) -> None:
        good = (await (await upload(client, ALICE, png(40))).json())["id"]
        storage = client.app[STORAGE]

        async def one(data: bytes) -> AsyncIterator[bytes]:
            yield data

        orphan = secrets.token_hex(16)
        await storage.put(orphan, one(b"orphan"))
        stuck_key = secrets.token_hex(16)
        await storage.put(stuck_key, one(b"half"))
        await client.app[MONGO].database["files"].insert_one({
            "owner_id": ALICE, "org_id": None, "name": "x", "content_type": "text/plain",
            "size": 0, "sha256": None, "status": "uploading", "object_key": stuck_key,
            "created_at": datetime.now(UTC),
        })  # fmt: skip
        files = client.app[FILES]
        report = await files.sweep()  # everything is fresh: could be in flight
        assert (report.orphan_blobs, report.stale_uploads) == (0, 0)
        assert len(await stored_keys(client)) == 3

        report = await files.sweep(now=datetime.now(UTC) + timedelta(hours=2))
        assert (report.orphan_blobs, report.stale_uploads) == (1, 1)
        assert [str(r["_id"]) for r in await records(client)] == [good]
        assert len(await stored_keys(client)) == 1
        got = await client.get(f"/api/v1/files/{good}/content", headers=auth(ALICE))
        assert got.status == 200

    async def wait_for(self, client: Client, predicate: Callable[[list[Any]], bool]) -> None:
        for _ in range(400):
            if predicate(await records(client)):
                return
            await asyncio.sleep(0.025)
        raise AssertionError("condition never became true")

    async def test_client_disconnecting_mid_upload_leaves_nothing(self, client: Client) -> None:
        assert client.server.host is not None
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        head = [
            "POST /api/v1/files?name=cut.png HTTP/1.1",
            f"Host: {client.server.host}",
            "Content-Type: image/png",
            f"Content-Length: {4 * MiB}",
            *(f"{k}: {v}" for k, v in auth(ALICE).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + png(MiB))
        await writer.drain()
        await self.wait_for(client, lambda rows: len(rows) == 1)  # the upload has begun
        writer.close()
        await writer.wait_closed()
        await self.wait_for(client, lambda rows: rows == [])
        assert await stored_keys(client) == []
        assert await outbox(client) == []
        del reader

    async def test_user_deleted_during_an_upload_cancels_it(self, client: Client) -> None:
        async def stream() -> AsyncIterator[bytes]:
            yield png(MiB)
            await self.wait_for(client, lambda rows: len(rows) == 1)
            await dispatch(client, "user.deleted", {"user_id": ALICE})
            yield os.urandom(MiB)

        response = await upload(client, ALICE, stream())
        assert response.status == 410
        await assert_nothing_stored(client)

    async def test_metadata_failure_removes_the_blob(self, client: Client) -> None:
        class BrokenOutbox:
            def transaction(self) -> Any:
                raise RuntimeError("database went away")

        client.app[FILES].bind(BrokenOutbox())  # type: ignore[arg-type]
        response = await upload(client, ALICE, png(100))
        assert response.status == 500
        assert "database" not in await response.text()
        await assert_nothing_stored(client)


class TestLocalFiles(FilesContract):
    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> dict[str, object]:
        return local_storage(tmp_path)

    async def test_objects_are_sharded_and_written_atomically(
        self, client: Client, tmp_path: Path
    ) -> None:
        await upload(client, ALICE, png(100))
        [record] = await records(client)
        key = record["object_key"]
        assert (tmp_path / "objects" / key[:2] / key[2:4] / key).is_file()
        leftovers = [p.name for p in (tmp_path / "objects").rglob(".tmp-*")]
        assert leftovers == []


class TestS3Files(FilesContract):
    # moto keeps parts in its own memory and is slower than a disk: 160 MiB (32 parts) still
    # proves the flat memory profile without dominating the suite's run time.
    large_mib = 160

    @pytest.fixture
    def storage_config(self, moto_endpoint: str, unique: str) -> dict[str, object]:
        return s3_storage(moto_endpoint, unique)

    async def test_bucket_is_created_and_failed_multipart_uploads_are_aborted(
        self, client: Client
    ) -> None:
        storage: Any = client.app[STORAGE]
        await storage.client.head_bucket(Bucket=storage.bucket)
        response = await upload(client, ALICE, png(9 * MiB))  # multipart, then 413
        assert response.status == 413

        async def stream() -> AsyncIterator[bytes]:
            yield PNG
            for _ in range(12):
                yield os.urandom(MiB)

        assert (await upload(client, ALICE, stream())).status == 413
        pending = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert pending.get("Uploads", []) == []
        await assert_nothing_stored(client)

    async def test_presigned_urls_when_configured(self, make_client: MakeClient) -> None:
        client = await make_client(s3_presign=True)
        data = png(1234)
        body = await (await upload(client, ALICE, data, name="pic.png")).json()
        response = await client.post(f"/api/v1/files/{body['id']}/url", headers=auth(ALICE))
        signed = await response.json()
        storage: Any = client.app[STORAGE]
        assert signed["url"].startswith(f"{storage.endpoint_url}/{storage.bucket}/")
        async with aiohttp.ClientSession() as http, http.get(signed["url"]) as got:
            assert got.status == 200
            assert await got.read() == data
            assert got.headers["Content-Disposition"].startswith('attachment; filename="pic.png"')

    async def test_sweeper_aborts_abandoned_multipart_uploads(self, client: Client) -> None:
        storage: Any = client.app[STORAGE]
        await storage.client.create_multipart_upload(Bucket=storage.bucket, Key="crashed")
        # (moto reports a fixed 2010 `Initiated`, so the "too young to abort" side of this rule
        # cannot be observed here; the cutoff is the same one the blob sweep uses.)
        report = await client.app[FILES].sweep(now=datetime.now(UTC) + timedelta(hours=2))
        assert report.aborted_uploads == 1
        pending = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert pending.get("Uploads", []) == []
