"""A cache entry's pre-rendered header lines (the fast front's HITs): only for headers that are
safe to write as stored; anything else goes to the generic writer, which refuses it."""

from __future__ import annotations

import pytest

from gateway.cache.entry import Entry


def entry(*headers: tuple[str, str]) -> Entry:
    return Entry(
        status=200, headers=[("Content-Type", "text/plain"), *headers], body=b"ok",
        gzipped=False, etag='"e"', stored_at=0.0, ttl=60.0, tags=[],
    )  # fmt: skip


def test_safe_headers_are_rendered_once_as_wire_lines() -> None:
    stored = entry(("X-A", "caf\u00e9\tx"), ("Vary", "Accept-Encoding"))
    wire = stored.wire_headers()
    assert wire == (
        "Content-Type: text/plain\r\nX-A: caf\u00e9\tx\r\n".encode(),
        "Accept-Encoding",
    )
    assert stored.wire_headers() is wire


@pytest.mark.parametrize(
    "header",
    [("X-A", "1\r\nInjected: 1"), ("X-A", "1\nInjected: 1"), ("X-A", "1\rx"), ("X-A", "a\x00b"),
     ("X-A", "a\x1bb"), ("X-A", "a\x7fb"), ("X-\x01A", "1")],
)  # fmt: skip
def test_an_entry_with_an_unsafe_header_is_not_pre_rendered(header: tuple[str, str]) -> None:
    assert entry(header).wire_headers() is None
