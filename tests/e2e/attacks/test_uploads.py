"""Hostile uploads: path traversal and header injection through file names, and content-type
spoofing. Names are neutralised when stored and in `Content-Disposition`; spoofed types are 415
with nothing stored."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.e2e.attacks.conftest import User, assert_problem, client, new_user
from tests.e2e.stack import Stack

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40


@pytest.fixture
async def uploader(stack: Stack) -> User:
    return await new_user(stack, "Uploader")


def objects(stack: Stack) -> list[Path]:
    root = stack.directory / "objects"
    return sorted(Path(d) / f for d, _, files in os.walk(root) for f in files)


def stray_files(stack: Stack, marker: str) -> list[str]:
    """Any path under the stack's directory (or the repo's var/) whose name carries the marker."""
    found = []
    for root in (stack.directory, Path(__file__).resolve().parents[3] / "var"):
        for d, dirs, files in os.walk(root):
            found += [os.path.join(d, n) for n in [*dirs, *files] if marker in n]
    return found


def assert_safe_name(name: str) -> None:
    assert name
    assert not name.startswith(".")
    for bad in ("/", "\\", "\r", "\n", "\x00", '"', ";", "\u202e"):
        assert bad not in name, (bad, name)


def assert_safe_disposition(value: str) -> None:
    assert "\r" not in value
    assert "\n" not in value
    assert value.startswith("attachment;")
    # Exactly one quoted filename whose inside has no quote; filename* is percent-encoded.
    ascii_part = value.split('filename="', 1)[1].split('"', 1)[0]
    assert "/" not in ascii_part
    assert "\\" not in ascii_part
    assert value.count('"') == 2, value


async def download(http: aiohttp.ClientSession, stack: Stack, user: User, file_id: str) -> Any:
    async with http.get(f"{stack.gateway}/api/v1/files/{file_id}/content", headers=user.auth) as r:
        assert r.status == 200
        return r.headers.getall("Content-Disposition"), r.headers, await r.read()


HOSTILE_NAMES = [
    "../../../../etc/{m}passwd",
    "..\\..\\windows\\{m}win.ini",
    "/etc/{m}shadow",
    "....//....//{m}x.txt",
    "%2e%2e%2f%2e%2e%2f{m}enc.txt",
    "{m}a\r\nSet-Cookie: session=stolen\r\nX-Evil: 1.txt",
    '{m}quote".txt; filename="evil.exe',
    "{m}semi;colon.txt",
    "{m}\u202etxt.exe",
    ".{m}hidden",
    "{m}nul\x00byte.txt",
    "{m}" + "long" * 200 + ".txt",
    "{m}\u00e9t\u00e9 \U0001f4c4.txt",
]


async def test_hostile_names_in_raw_uploads_are_neutralised(stack: Stack, uploader: User) -> None:
    marker = "m" + uuid.uuid4().hex[:8]
    gw = stack.gateway
    async with client() as http:
        for template in HOSTILE_NAMES:
            raw = template.format(m=marker)
            async with http.post(
                f"{gw}/api/v1/files?name={quote(raw, safe='')}",
                headers={**uploader.auth, "Content-Type": "text/plain"},
                data=b"hello\n",
            ) as r:
                if r.status != 201:
                    await assert_problem(r, (400, 422), stack=stack)
                    continue
                stored = await r.json()
            assert_safe_name(stored["name"])
            assert len(stored["name"]) <= 255
            dispositions, headers, content = await download(http, stack, uploader, stored["id"])
            assert len(dispositions) == 1
            assert_safe_disposition(dispositions[0])
            assert "Set-Cookie" not in headers
            assert "X-Evil" not in headers
            assert content == b"hello\n"
    # Stored object keys never derive from client names; nothing landed outside the store.
    assert not [p for p in objects(stack) if marker in str(p)]
    assert stray_files(stack, marker) == []


def multipart(
    filename_header: bytes, content: bytes, ctype: bytes = b"text/plain"
) -> tuple[bytes, str]:
    boundary = "b" + uuid.uuid4().hex
    body = (
        b"--" + boundary.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="file"; ' + filename_header + b"\r\n"
        b"Content-Type: " + ctype + b"\r\n\r\n" + content + b"\r\n"
        b"--" + boundary.encode() + b"--\r\n"
    )
    return body, f"multipart/form-data; boundary={boundary}"


async def test_hostile_names_in_multipart_uploads_are_neutralised(
    stack: Stack, uploader: User
) -> None:
    marker = "m" + uuid.uuid4().hex[:8]
    gw = stack.gateway
    headers_list = [
        f'filename="../../{marker}.txt"'.encode(),
        f'filename="..\\\\..\\\\{marker}.txt"'.encode(),
        f"filename*=UTF-8''..%2F..%2F{marker}%0D%0AX-Evil%3A%201.txt".encode(),
        f'filename="{marker}\\".txt"'.encode(),
        f'filename="/var/tmp/{marker}.sh"'.encode(),
    ]
    async with client() as http:
        for header in headers_list:
            body, ctype = multipart(header, b"multipart hello\n")
            async with http.post(
                f"{gw}/api/v1/files", data=body, headers={**uploader.auth, "Content-Type": ctype}
            ) as r:
                if r.status != 201:
                    await assert_problem(r, (400, 422), stack=stack)
                    continue
                stored = await r.json()
            assert_safe_name(stored["name"])
            dispositions, headers, _ = await download(http, stack, uploader, stored["id"])
            assert len(dispositions) == 1
            assert_safe_disposition(dispositions[0])
            assert "X-Evil" not in headers
    assert stray_files(stack, marker) == []


SPOOFS = [
    pytest.param(b"just some text, not an image\n", "image/png", id="text-as-png"),
    pytest.param(b"<html><script>alert(1)</script></html>", "image/png", id="html-as-png"),
    pytest.param(b"<html><script>alert(1)</script></html>", "text/html", id="html-as-html"),
    pytest.param(
        b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "image/svg+xml", id="svg"
    ),
    pytest.param(b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "image/png", id="elf-as-png"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "application/octet-stream", id="elf"),
    pytest.param(b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 64, "image/jpeg", id="exe-as-jpeg"),
    pytest.param(PNG, "text/plain", id="png-as-text"),
    pytest.param(PNG, "image/jpeg", id="png-as-jpeg"),
]


@pytest.mark.parametrize(("content", "declared"), SPOOFS)
async def test_content_type_spoofing_is_415_and_nothing_is_stored(
    stack: Stack, uploader: User, content: bytes, declared: str
) -> None:
    gw = stack.gateway
    async with client() as http:
        before = objects(stack)
        async with http.post(
            f"{gw}/api/v1/files?name=innocent.png",
            data=content,
            headers={**uploader.auth, "Content-Type": declared},
        ) as r:
            await assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", stack=stack)
        form = aiohttp.FormData()
        form.add_field("file", content, filename="innocent.png", content_type=declared)
        async with http.post(f"{gw}/api/v1/files", data=form, headers=uploader.auth) as r:
            await assert_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", stack=stack)
        async with http.get(f"{gw}/api/v1/files", headers=uploader.auth) as r:
            assert (await r.json())["items"] == []
        assert objects(stack) == before


async def test_control_a_real_png_is_stored_as_png(stack: Stack, uploader: User) -> None:
    async with client() as http:
        async with http.post(
            f"{stack.gateway}/api/v1/files?name=ok.png",
            data=PNG,
            headers={**uploader.auth, "Content-Type": "image/png"},
        ) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["content_type"] == "image/png"
        _, headers, _ = await download(http, stack, uploader, (await r.json())["id"])
        assert headers["Content-Type"].startswith("image/png")
        assert headers["X-Content-Type-Options"] == "nosniff"
