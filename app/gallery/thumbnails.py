"""Gallery thumbnails: small WebP files made from the PNG (by the worker, or lazily for
images made before thumbnails existed)."""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIDE = 384  # the longest side: sharp in a 200-300 px grid cell on a 2x screen


def webp(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """The image fitted into ``side``×``side`` (never enlarged), as WebP bytes."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def webp_from_png(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return webp(image, side)
