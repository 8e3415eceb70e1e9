"""Pure rules: sniffing, type resolution, names, Content-Disposition, Range parsing, OpenAPI."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from services.files.content import (
    ByteRange,
    Unsatisfiable,
    content_disposition,
    parse_range,
    resolve_type,
    sanitize_name,
    sniff,
)
from services.files.openapi import openapi_document


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0..JFIF", "image/jpeg"),
        (b"GIF87a..", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04....", "application/zip"),
        (b"\x1f\x8b\x08\x00", "application/gzip"),
        (b'  {"a": 1}', "application/json"),
        (b"a,b\n1,2\n", "text/plain"),
        ("héllo".encode(), "text/plain"),
        (b"", "text/plain"),
        (b"\x00\x01\x02", None),
        (b"\xc3\x28 invalid utf-8", None),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head, complete=True) == expected


def test_sniff_tolerates_a_character_cut_at_the_end_of_the_head() -> None:
    head = "ab€".encode()[:-1]
    assert sniff(head, complete=False) == "text/plain"
    assert sniff(head, complete=True) is None


@pytest.mark.parametrize(
    ("declared", "sniffed", "expected"),
    [
        (None, "image/png", "image/png"),
        ("application/octet-stream", "image/png", "image/png"),
        ("IMAGE/PNG; q=1", "image/png", "image/png"),
        ("image/jpg", "image/jpeg", "image/jpeg"),
        ("image/gif", "image/png", None),
        ("text/csv", "text/plain", "text/csv"),
        ("application/json", "application/json", "application/json"),
        ("text/plain", "image/png", None),
        ("image/png", "text/plain", None),
        ("text/html", "text/plain", None),
        (None, None, None),
    ],
)
def test_resolve_type(declared: str | None, sniffed: str | None, expected: str | None) -> None:
    assert resolve_type(declared, sniffed) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/etc/passwd", "passwd"),
        ("a/b\\c.txt", "c.txt"),
        ("\u202egnp.exe", "gnp.exe"),  # right-to-left override stripped
        (".htaccess", "htaccess"),
        ("", "file"),
        (None, "file"),
        ("a\x7fb\x85c", "abc"),
        ('x"; filename="y', "x__ filename=_y"),
    ],
)
def test_sanitize_name(raw: str | None, expected: str) -> None:
    assert sanitize_name(raw) == expected


def test_content_disposition_has_ascii_fallback_and_exact_utf8() -> None:
    value = content_disposition("résumé 100%.pdf")
    assert value == (
        "attachment; filename=\"resume 100_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20100%25.pdf"
    )
    assert content_disposition("📄").startswith('attachment; filename="file"')


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=9-", 10, ByteRange(9, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=2-100", 10, ByteRange(2, 9)),
        ("Bytes = 1 - 2", 10, ByteRange(1, 2)),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=-", 10, None),
        ("lines=1-2", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_openapi_document_is_valid_and_uses_the_contract_paths() -> None:
    document = openapi_document()
    validate(document)
    assert set(document["paths"]) == {
        "/api/v1/files",
        "/api/v1/files/{id}",
        "/api/v1/files/{id}/content",
        "/api/v1/files/{id}/url",
        "/api/v1/files/{id}/thumbnail",
    }
