"""Uploaded images and masks, and the geometry of outpainting — pure Pillow, no torch.

The web process checks every upload here before a job is priced or charged: an
upload that is not an image, is too large in bytes or in pixels (a decompression
bomb), or a mask that does not match its image is a :class:`UserError` with a
message, never a worker failure.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from app.enums import Mode
from app.errors import UserError
from app.generation.schemas import MAX_ASPECT, MIN_SIZE, Extend

ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}

Box = tuple[int, int, int, int]  # (left, top, right, bottom)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 16 * 1024 * 1024  # 4096x4096; Pillow's own bomb check is at ~89 MP


def open_upload(data: bytes, *, field: str, label: str, limits: UploadLimits) -> Image.Image:
    """Decode an uploaded image, refusing what is not a PNG/JPEG/WebP or is too big.

    The header is read first and the pixel count checked before any pixel is
    decoded, so a 50 KB file claiming 100,000 × 100,000 pixels costs nothing.
    """
    if not data:
        raise UserError(f"Choose {label} to upload.", field=field)
    if len(data) > limits.max_bytes:
        raise UserError(
            f"{label.capitalize()} is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB.",
            field=field,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise UserError(f"{label.capitalize()} must be a PNG, JPEG or WebP image.", field=field)
            w, h = image.size
            if w * h > limits.max_pixels:
                raise UserError(
                    f"{label.capitalize()} is {w}×{h} pixels; the limit is {limits.max_pixels / 1e6:.0f} megapixels.",
                    field=field,
                )
            image.load()
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(
            f"{label.capitalize()} has too many pixels; the limit is {limits.max_pixels / 1e6:.0f} megapixels.",
            field=field,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"{label.capitalize()} is not an image we can read (PNG, JPEG or WebP).", field=field) from None
    return ImageOps.exif_transpose(image)


MIN_SIDE = 64


def check_sides(size: tuple[int, int], *, field: str = "image", what: str = "The image") -> None:
    """An image mode's source (and an outpainted frame) is held to a requested size's
    rules: each side at least :data:`MIN_SIZE` pixels, no wider or taller than
    :data:`MAX_ASPECT`:1. Fitting a 1×100000 strip would otherwise make an 8×512 image."""
    w, h = size
    if min(w, h) < MIN_SIZE:
        raise UserError(f"{what} is {w}×{h} pixels; each side must be at least {MIN_SIZE} pixels.", field=field)
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise UserError(
            f"{what} is {w}×{h} pixels, longer than {MAX_ASPECT:g}:1; "
            f"crop it to a ratio between 1:{MAX_ASPECT:g} and {MAX_ASPECT:g}:1.",
            field=field,
        )


def fitted_size(size: tuple[int, int], default_size: int, max_size: int, multiple: int) -> tuple[int, int]:
    """About the model's native pixel count (never past ``max_size`` a side, the short
    side at least 64 where the long one allows), each side a multiple of ``multiple``,
    the aspect ratio kept within a rounding step."""
    w, h = size
    scale = (default_size * default_size / (w * h)) ** 0.5
    scale = max(scale, MIN_SIDE / min(w, h))  # a thin image keeps a usable short side
    scale = min(scale, max_size / w, max_size / h)
    top = max_size // multiple * multiple
    new_w = min(top, max(multiple, round(w * scale / multiple) * multiple))
    new_h = min(top, max(multiple, round(h * scale / multiple) * multiple))
    return new_w, new_h


def fit_to_model(image: Image.Image, *, default_size: int, max_size: int, multiple: int) -> Image.Image:
    """``image`` scaled to :func:`fitted_size`."""
    size = fitted_size(image.size, default_size, max_size, multiple)
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def outpaint_size(size: tuple[int, int], extend: Extend, max_size: int, multiple: int) -> tuple[int, int]:
    """The outpainted frame's size: ``size`` plus ``extend``, rounded up to ``multiple``,
    then shrunk as a whole (aspect kept) if a side passes ``max_size``."""
    w = size[0] + extend.left + extend.right
    h = size[1] + extend.top + extend.bottom
    w, h = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    top = max_size // multiple * multiple
    return min(top, max(multiple, round(w * scale / multiple) * multiple)), min(
        top, max(multiple, round(h * scale / multiple) * multiple)
    )


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def model_inputs(
    mode: str,
    source: Image.Image,
    *,
    size: tuple[int, int],
    work_size: tuple[int, int],
    extend: Extend | None = None,
    multiple: int = 8,
    mask: Image.Image | None = None,
) -> tuple[Image.Image, Image.Image | None]:
    """An image mode's source, and its mask where the mode has one, as the model gets
    them at the output ``size``: an upscale's source as it is (the worker enlarges it
    tile by tile); an outpaint's source fitted to ``work_size`` in its extended canvas;
    any other mode's source resized to ``size``, with the inpainting ``mask`` checked
    against the source and resized with it."""
    if mode == Mode.UPSCALE:
        return source.convert("RGB"), None
    if mode == Mode.OUTPAINT:
        return _outpaint_inputs(source, size=size, work_size=work_size, extend=extend or Extend(), multiple=multiple)
    canvas = source.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if mode != Mode.INPAINT:
        return canvas, None
    if mask is None:
        raise UserError("Paint over the area to regenerate, or upload a mask.", field="mask")
    return canvas, mask_from_upload(mask, source.size).resize(size, Image.Resampling.NEAREST)


def _outpaint_inputs(
    source: Image.Image, *, size: tuple[int, int], work_size: tuple[int, int], extend: Extend, multiple: int
) -> tuple[Image.Image, Image.Image]:
    fitted = source.convert("RGB").resize(work_size, Image.Resampling.LANCZOS)
    canvas, mask = outpaint_canvas(fitted, extend.scaled(fitted.width / source.width), multiple=multiple)
    if canvas.size != size:  # larger than the model allows: shrink the whole frame
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return canvas, mask


def mask_from_upload(mask: Image.Image, size: tuple[int, int], *, field: str = "mask") -> Image.Image:
    """A black-and-white mask (white = repaint) for an image of ``size``.

    Masks painted in the browser arrive at the image's own size; an uploaded mask
    must match the image (or have its aspect ratio, and is then scaled). A mask
    with nothing painted would change nothing and is refused.
    """
    if mask.size != size:
        mw, mh = mask.size
        if abs(mw / mh - size[0] / size[1]) > 0.01:
            raise UserError(
                f"The mask is {mw}×{mh} but the image is {size[0]}×{size[1]}; they must be the same shape.",
                field=field,
            )
        mask = mask.resize(size, Image.Resampling.NEAREST)
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        # a painted layer: whatever was painted (opaque) is the area to repaint
        grey = mask.convert("RGBA").getchannel("A")
    else:
        grey = mask.convert("L")
    binary = grey.point(lambda v: 255 if v >= 128 else 0)
    if binary.getbbox() is None:
        raise UserError("The mask is empty: paint over the part of the image to regenerate.", field=field)
    return binary


def outpaint_canvas(
    image: Image.Image, extend: Extend, *, overlap: int = 8, multiple: int = 8
) -> tuple[Image.Image, Image.Image]:
    """The enlarged canvas and its mask for outpainting.

    The canvas is the image pasted into a larger frame whose new area is filled
    with the image's edge pixels stretched outwards (a neutral start that keeps the
    colours continuous); the mask is white over the new area plus ``overlap``
    pixels into the old image, so the seam is regenerated too. Each side is
    rounded up to a multiple of ``multiple``, the extra going to the extended sides.
    """
    if not extend.any:
        raise UserError("Choose at least one side to extend.", field="extend")
    w, h = image.size
    left, right, top, bottom = extend.left, extend.right, extend.top, extend.bottom
    new_w, new_h = w + left + right, h + top + bottom
    pad_w, pad_h = (-new_w) % multiple, (-new_h) % multiple
    if pad_w:
        if right or not left:
            right += pad_w
        else:
            left += pad_w
        new_w += pad_w
    if pad_h:
        if bottom or not top:
            bottom += pad_h
        else:
            top += pad_h
        new_h += pad_h
    rgb = image.convert("RGB")
    # Edge-stretched fill: pad by repeating the border pixels, then blur the new area.
    canvas = _edge_pad(rgb, left, right, top, bottom)
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius=max(4, min(new_w, new_h) // 32)))
    mask = Image.new("L", (new_w, new_h), 255)
    keep = (
        left + (overlap if left else 0),
        top + (overlap if top else 0),
        left + w - (overlap if right else 0),
        top + h - (overlap if bottom else 0),
    )
    mask.paste(0, keep)
    canvas = Image.composite(blurred, canvas, mask)
    canvas.paste(rgb.crop((keep[0] - left, keep[1] - top, keep[2] - left, keep[3] - top)), keep[:2])
    return canvas, mask


def _edge_pad(image: Image.Image, left: int, right: int, top: int, bottom: int) -> Image.Image:
    import numpy as np

    array = np.asarray(image)
    padded = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    return Image.fromarray(padded)


def tile_grid(width: int, height: int, tile: int, overlap: int = 64) -> list[Box]:
    """Boxes ``(left, top, right, bottom)`` of at most ``tile`` a side that cover a
    ``width`` × ``height`` image, neighbours overlapping by at least ``overlap``
    (blended when stitched). One box when the image fits in one tile."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        count = -(-(length - overlap) // (tile - overlap))
        step = (length - tile) / (count - 1)
        return [round(i * step) for i in range(count)]

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def feather_mask(size: tuple[int, int], box: Box, full: tuple[int, int], ramp: int) -> Image.Image:
    """A tile's blending weight: 255 inside, ramping down to 0 over ``ramp`` pixels on
    each side that borders another tile (not on the image's own edges)."""
    import numpy as np

    w, h = size
    left, top, right, bottom = box
    xs = np.ones(w, dtype=np.float32)
    ys = np.ones(h, dtype=np.float32)
    ramp_up = np.linspace(0, 1, ramp + 2, dtype=np.float32)[1:-1]
    if ramp and left > 0:
        xs[:ramp] = ramp_up
    if ramp and right < full[0]:
        xs[-ramp:] = np.minimum(xs[-ramp:], ramp_up[::-1])
    if ramp and top > 0:
        ys[:ramp] = ramp_up
    if ramp and bottom < full[1]:
        ys[-ramp:] = np.minimum(ys[-ramp:], ramp_up[::-1])
    return Image.fromarray((np.outer(ys, xs) * 255).astype(np.uint8), mode="L")
