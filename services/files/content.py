"""What the bytes are and how they are named: content sniffing, file-name sanitizing,
`Content-Disposition` (RFC 6266) and `Range` (RFC 9110 §14) parsing. Pure functions."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

SNIFF_BYTES = 512
OCTET_STREAM = "application/octet-stream"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # empty archive
    (b"\x1f\x8b", "application/gzip"),
)
# Text types the client may declare for bytes that sniff as UTF-8 text; the bytes cannot tell
# CSV from plain text, so the declaration refines "text" but can never turn text into binary.
TEXT_TYPES = frozenset({"text/plain", "text/csv", "text/markdown", "application/json"})
_ALIASES = {"image/jpg": "image/jpeg", "application/x-gzip": "application/gzip",
            "application/x-zip-compressed": "application/zip"}  # fmt: skip


def sniff(head: bytes, *, complete: bool) -> str | None:
    """The media type the first bytes show, or None for unknown binary.

    `complete` says `head` is the whole file (so a multi-byte character cannot be cut at its end).
    """
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if b"\x00" in head:
        return None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return None
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "application/json"
    return "text/plain"


def normalize_type(value: str | None) -> str | None:
    """`Image/PNG; charset=x` -> `image/png`; empty -> None."""
    if not value:
        return None
    media = value.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media) or None


def resolve_type(declared: str | None, sniffed: str | None) -> str | None:
    """The type to store: the sniffed one, refined by a compatible declaration; None = refuse."""
    declared = normalize_type(declared)
    if sniffed is None:
        return None
    if declared is None or declared == OCTET_STREAM:
        return sniffed
    if sniffed in TEXT_TYPES:
        return declared if declared in TEXT_TYPES else None
    return sniffed if declared == sniffed else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE = re.compile(r"[\"\\/:*?<>|;]")


def sanitize_name(raw: str | None, *, max_length: int = 255, default: str = "file") -> str:
    """A display name safe in JSON, HTML and headers: the last path part only, no control
    characters, no quotes/separators, no leading dots, capped length (extension kept)."""
    if not raw:
        return default
    name = unicodedata.normalize("NFC", raw)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cf", "Zl", "Zp"))
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if not name:
        return default
    if len(name) > max_length:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: max_length - len(ext) - 1] + "." + ext
        else:
            name = name[:max_length]
    return name


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback `filename` and the exact `filename*` (RFC 6266/8187)."""
    ascii_name = (
        unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "file"
    )
    ascii_name = _UNSAFE.sub("_", _CONTROL.sub("", ascii_name)).replace("%", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """The Range cannot be served for this size (-> 416)."""


_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, None to send the whole body.

    Per RFC 9110 §14.2 a server may ignore `Range`: malformed headers, other units and
    multi-range requests (we do not produce multipart/byteranges) get the whole file (200).
    A syntactically valid single range that starts at or beyond the end raises Unsatisfiable.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE.fullmatch(spec)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid spec: ignored
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(end, size - 1))
