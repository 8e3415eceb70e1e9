"""Thumbnails of uploaded images, rendered by a consumer of `file.uploaded`.

Decoding hostile images is the risk here: the pixel count is checked from the header before any
pixel is decoded (a 100 kB PNG can claim 10^10 pixels), JPEGs are decoded at reduced scale
(`draft`), and rendering runs in a worker thread so the event loop never waits on it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["THUMBNAIL_TYPES", "ThumbnailError", "render_thumbnail"]

THUMBNAIL_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_SOURCE_PIXELS = 50_000_000  # ~ a 50 MP photo; beyond that we decline


class ThumbnailError(Exception):
    """The image cannot (or must not) be rendered; retrying will not help."""


def render_thumbnail(data: bytes, max_side: int) -> tuple[bytes, str]:
    """A thumbnail at most `max_side` pixels wide and high, and its media type."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_SOURCE_PIXELS:
                    raise ThumbnailError("too many pixels")
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale
                image.seek(0)  # animations: the first frame
                frame = ImageOps.exif_transpose(image)
                frame.thumbnail((max_side, max_side))
                return _encode(frame)
    except ThumbnailError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        ValueError,
        EOFError,
        SyntaxError,  # raised by some Pillow plugins on malformed headers
    ) as exc:
        raise ThumbnailError(type(exc).__name__) from None


def _encode(frame: Image.Image) -> tuple[bytes, str]:
    out = io.BytesIO()
    transparent = frame.mode in ("RGBA", "LA") or (
        frame.mode == "P" and "transparency" in frame.info
    )
    if transparent:
        frame.convert("RGBA").save(out, "PNG", optimize=True)
        return out.getvalue(), "image/png"
    frame.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue(), "image/jpeg"
